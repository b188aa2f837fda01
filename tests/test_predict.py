"""`c2ftrain predict` and what checkpoints record of their inputs: audio files are scored as the
store path scores the same clips (build -> store -> loader), long files window by window, bad
files are reported without losing the others, and `c2ftrain eval` refuses a store whose features
or classes differ from the training store's."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from conftest import tone
from test_trainer import toy_recipe

from c2fdata.build import BuildConfig, build_store
from c2fdata.features import FbankConfig, fbank
from c2fdata.pipeline import PipelineConfig, make_loader
from c2fdata.reader import StoreReader
from c2fdata.store import create_store_from_arrays
from c2fdata.vocab import Vocabulary
from c2ftrain.checkpoint import load_checkpoint, save_checkpoint
from c2ftrain.cli import main
from c2ftrain.evaluate import evaluate_checkpoint
from c2ftrain.predict import load_predictor, predict_file, predict_files
from c2ftrain.trainer import PhaseTrainer
from c2ftrain.windows import window_starts

FRAMES = 128  # the store's clip length: 1.28 s
NORM = (-6.0, 3.0)  # the recipe's normalisation, far from the store's own statistics


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store built by `c2fdata build` from wav files (two classes: high and low tones, clips of
    1.0 to 1.3 s), and a tiny model trained on it with the recipe's own normalisation."""
    root = tmp_path_factory.mktemp("predict")
    for split, n in (("train", 8), ("eval", 4)):
        for name, base in (("high", 1500), ("low", 200)):
            (root / "data" / split / name).mkdir(parents=True)
            for k in range(n):
                sf.write(root / "data" / split / name / f"{k}.wav",
                         tone(1.0 + 0.1 * (k % 4), freq=base + 40 * k, seed=k), 16000)
    store = root / "store"
    build_store(BuildConfig(dataset="folder", root=root / "data", out=store, block_clips=4,
                            options={"target_frames": FRAMES}))
    assert abs(StoreReader(store, "train").mean - NORM[0]) > 2  # so that the wrong normalisation shows
    recipe = toy_recipe(store, norm_mean=NORM[0], norm_std=NORM[1], batch_size=8)
    PhaseTrainer(recipe, recipe.phases, root / "run", "c2f", device="cpu").run()
    return root, store, root / "run"


@torch.no_grad()
def store_path(checkpoint, store) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """Clip id -> (model input, softmax scores) through the store: features made by the build,
    kept as float16, padded, cropped and normalised by the loader (the path evaluation takes)."""
    model, _ = load_predictor(checkpoint)
    reader = StoreReader(store, "eval")
    loader = make_loader(PipelineConfig(store=store, split="eval", batch_size=64, target_frames=FRAMES,
                                        norm_mean=NORM[0], norm_std=NORM[1]), reader)
    inputs, scores = {}, {}
    try:
        loader.set_epoch(0)
        for batch in loader:
            x = batch["features"].float()
            for i, xi, si in zip(batch["index"].tolist(), x, torch.softmax(model(x), -1).numpy()):
                inputs[reader.ids[i]], scores[reader.ids[i]] = xi, si
    finally:
        loader.close()
    return inputs, scores


def test_files_are_fed_and_scored_as_the_store_feeds_them(trained):
    """The model's input itself is compared, clip by clip: normalisation, padding (clips of 1.0
    to 1.3 s in 1.28 s windows) and crop position show there, whatever the model learnt."""
    root, store, run = trained
    want_inputs, want_scores = store_path(run / "final.pt", store)
    results, inputs = predict_files(run / "final.pt", [root / "data" / "eval"], device="cpu")  # a folder
    assert len(results) == len(want_scores) == 8 and inputs.vocabulary.names == ("high", "low")
    assert (inputs.norm_mean, inputs.norm_std) == NORM and inputs.target_frames == FRAMES
    model, inputs = load_predictor(run / "final.pt")
    fed = []
    model.register_forward_pre_hook(lambda _, args: fed.append(args[0][0].clone()))
    for r in results:
        clip = "/".join(r.path.split("/")[-2:])[: -len(".wav")]  # <class>/<k>, the folder dataset's id
        assert r.windows == 1 and not r.error
        assert predict_file(model, inputs, Path(r.path), torch.device("cpu")).scores.tolist() == r.scores.tolist()
        # float16 storage: |x| < 16 rounds by at most 2^-8, 6.5e-4 after dividing by 2 std = 6
        torch.testing.assert_close(fed[-1], want_inputs[clip], rtol=0, atol=1e-3)
        assert np.abs(r.scores - want_scores[clip]).max() < 1e-3, clip
        assert r.scores.sum() == pytest.approx(1.0, abs=1e-5)
    padded = [x for x in want_inputs.values() if (x[-10:] == (0 - NORM[0]) / (2 * NORM[1])).all()]
    assert len(padded) >= 4  # the clips under 1.28 s: their padding, normalised, was compared too


def test_a_long_file_is_scored_window_by_window(trained):
    root, _, run = trained
    long = np.concatenate([tone(1.5, freq=1600, seed=1), tone(1.2, freq=250, seed=2)])
    sf.write(root / "long.wav", long, 16000)
    [r], _ = predict_files(run / "final.pt", [root / "long.wav"], device="cpu")
    feats = fbank(long, 16000, FbankConfig())  # 268 frames: windows at 0, 128 and 140 (the last ends at the end)
    assert len(feats) == 268 and r.windows == 3 and r.seconds == pytest.approx(2.7)
    model, _ = load_predictor(run / "final.pt")
    with torch.no_grad():
        x = torch.stack([feats[s:s + FRAMES] for s in (0, 128, 140)])
        want = torch.softmax(model((x - NORM[0]) / (2 * NORM[1])), -1).mean(0).numpy()
    np.testing.assert_allclose(r.scores, want, rtol=1e-5, atol=1e-6)


def test_window_starts():
    assert window_starts(90, 128) == [0]  # zero-padded
    assert window_starts(128, 128) == [0]
    assert window_starts(256, 128) == [0, 128]
    assert window_starts(300, 128) == [0, 128, 172]


def test_cli_reports_bad_files_and_scores_the_rest(trained):
    root, _, run = trained
    good = root / "data" / "eval" / "high" / "0.wav"
    (root / "notes.wav").write_text("not audio")
    sf.write(root / "blip.wav", tone(0.01), 16000)  # 160 samples: shorter than one 25 ms window
    r = CliRunner().invoke(main, ["predict", str(run / "final.pt"), str(good), str(root / "notes.wav"),
                                  str(root / "blip.wav"), "--json", "--top-k", "2", "--device", "cpu"])
    assert r.exit_code == 1
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["path"] for row in rows] == [str(good), str(root / "notes.wav"), str(root / "blip.wav")]
    assert [c["name"] for c in rows[0]["top"]] in (["high", "low"], ["low", "high"]) and rows[0]["error"] == ""
    assert rows[1]["error"].startswith("unreadable: ") and str(root / "notes.wav") in rows[1]["error"]
    assert rows[2]["error"].startswith("too-short: ") and rows[2]["top"] == []
    assert "2 of 3 files could not be scored" in r.stderr
    r = CliRunner().invoke(main, ["predict", str(run / "final.pt"), str(good), "--device", "cpu"])
    assert r.exit_code == 0 and "best 2 of 2 classes" in r.stdout
    first_column = "".join(line.split("│")[1].strip() for line in r.stdout.splitlines() if line.startswith("│"))
    assert first_column == str(good)  # folded over lines, never cut short
    last_column = [line.split("│")[-2].strip() for line in r.stdout.splitlines() if line.startswith("│")]
    assert sorted(c.split()[1] for c in last_column if c) == ["high", "low"]  # a line per class
    r = CliRunner().invoke(main, ["predict", str(run / "final.pt"), str(root / "nowhere.wav")])
    assert r.exit_code == 2 and "nowhere.wav: no such file or folder" in r.stderr


def test_a_checkpoint_from_before_inputs_were_recorded(trained, tmp_path):
    """last.pt holds the recipe: with the store named, its inputs are recovered in full. final.pt
    has always named its store, which is then the default (with the store's statistics)."""
    root, store, run = trained
    old_keys = lambda state: {k: v for k, v in state.items()
                              if k not in ("inputs", "store", "store_absolute", "store_fingerprint")}
    save_checkpoint(tmp_path / "old.pt", old_keys(load_checkpoint(run / "checkpoints" / "last.pt")))
    with pytest.raises(ValueError, match="give the store it was trained on with --store"):
        load_predictor(tmp_path / "old.pt")
    _, inputs = load_predictor(tmp_path / "old.pt", store)
    _, recorded = load_predictor(run / "checkpoints" / "last.pt")
    assert inputs == recorded
    wav = root / "data" / "eval" / "low" / "1.wav"
    [old], _ = predict_files(tmp_path / "old.pt", [wav], store=store, device="cpu")
    [new], _ = predict_files(run / "checkpoints" / "last.pt", [wav], device="cpu")
    np.testing.assert_array_equal(old.scores, new.scores)
    final = load_checkpoint(run / "final.pt")
    save_checkpoint(tmp_path / "old-final.pt", {**old_keys(final), "store": str(store)})  # as final.pt was saved
    _, inputs = load_predictor(tmp_path / "old-final.pt")
    reader = StoreReader(store, "train")
    assert (inputs.norm_mean, inputs.norm_std) == (reader.mean, reader.std) and inputs.vocabulary == recorded.vocabulary
    save_checkpoint(tmp_path / "moved.pt", {**old_keys(final), "store": str(tmp_path / "gone")})
    with pytest.raises(ValueError, match=r"moved\.pt was saved before .* its training store .*gone cannot be read "
                                         r"\(.*\): give it with --store"):
        load_predictor(tmp_path / "moved.pt")


EVALUATED = ("skipped_clips", "checkpoint", "store", "split", "clips", "notes")  # what evaluate_checkpoint says beside the metrics


def test_eval_refuses_a_store_with_other_features_or_classes(trained, tmp_path):
    _, _, run = trained
    rng = np.random.default_rng(0)

    def other(name, classes, fb=None):
        split = {"features": rng.normal(-5, 2, (4, FRAMES, 128)).astype(np.float32), "frames": np.full(4, FRAMES),
                 "labels": [[classes[i % 2]] for i in range(4)], "ids": [str(i) for i in range(4)]}
        create_store_from_arrays(tmp_path / name, dataset="x", vocabulary=Vocabulary.from_names(classes),
                                 multi_label=False, splits={"train": split, "eval": split}, fbank=fb)
        return tmp_path / name

    same = other("same", ["high", "low"])
    assert set(evaluate_checkpoint(run / "final.pt", same, device="cpu")) == {"accuracy", *EVALUATED}
    with pytest.raises(ValueError, match=r"has the same 2 classes in another order \(class 0 is 'low', trained "
                                         r"as 'high'\)"):
        evaluate_checkpoint(run / "final.pt", other("swapped", ["low", "high"]), device="cpu")
    with pytest.raises(ValueError, match=r"has frame_shift_ms 20\.0 \(trained with 10\.0\)"):
        evaluate_checkpoint(run / "final.pt", other("hop", ["high", "low"], FbankConfig(frame_shift_ms=20.0)),
                            device="cpu")
    with pytest.raises(ValueError, match=r"has other classes \(class 1 is 'quiet'"):
        evaluate_checkpoint(run / "final.pt", other("renamed", ["high", "quiet"]), device="cpu")
    # a checkpoint from before inputs were recorded: only the number of classes and mels can be checked
    old = tmp_path / "old.pt"
    save_checkpoint(old, {k: v for k, v in load_checkpoint(run / "final.pt").items() if k != "inputs"})
    assert set(evaluate_checkpoint(old, tmp_path / "swapped", device="cpu")) == {"accuracy", *EVALUATED}
    with pytest.raises(ValueError, match=r"old\.pt was trained for 2 classes x 128 mels; .*three has 3 x 128"):
        evaluate_checkpoint(old, other("three", ["a", "b", "c"]), device="cpu")
    # predict with --store and a checkpoint that recorded its inputs: the store is checked against them
    with pytest.raises(ValueError, match="the same 2 classes in another order"):
        load_predictor(run / "final.pt", tmp_path / "swapped")


def test_a_coarse_checkpoint_is_resampled_as_its_recipe_resamples():
    """last.pt saved in a coarse phase: eval and predict bring it to full resolution with the
    recipe's interpolation (here bicubic, not the default bilinear)."""
    import copy

    from c2ftrain.evaluate import to_full_resolution
    from c2ftrain.model import AST, ast_config

    coarse = AST(ast_config("tiny", n_mels=128, target_frames=128, patch_stride=(16, 16), num_classes=2))
    coarse.set_time_resolution(32)
    state = {"recipe": {"model": {"interpolation": "bicubic", "antialias": False}}}
    got = to_full_resolution(copy.deepcopy(coarse), state, 128).pos_embed
    bicubic, bilinear = copy.deepcopy(coarse), copy.deepcopy(coarse)
    bicubic.set_time_resolution(128, interpolation="bicubic", antialias=False)
    bilinear.set_time_resolution(128)
    assert torch.equal(got, bicubic.pos_embed) and not torch.equal(got, bilinear.pos_embed)
    assert torch.equal(to_full_resolution(copy.deepcopy(coarse), {}, 128).pos_embed, bilinear.pos_embed)  # final.pt


def test_folders_are_walked_as_a_build_walks_them(trained, tmp_path):
    """Hidden files are no clips; files c2f cannot decode are reported, each with what to do."""
    _, _, run = trained
    folder = tmp_path / "mixed"
    folder.mkdir()
    sf.write(folder / "a.wav", tone(1.0, freq=1500), 16000)
    (folder / "._a.wav").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (folder / "b.m4a").write_bytes(b"not for libsndfile")
    results, _ = predict_files(run / "final.pt", [folder], device="cpu")
    assert [Path(r.path).name for r in results] == ["a.wav", "b.m4a"]
    assert not results[0].error and results[1].error.startswith("format c2f cannot decode (.m4a): convert it")


def test_eval_defaults_to_the_training_store_and_the_runs_eval_split(trained, tmp_path):
    _, store, run = trained
    r = CliRunner().invoke(main, ["eval", str(run / "final.pt"), "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    given = CliRunner().invoke(main, ["eval", str(run / "final.pt"), "--store", str(store), "--split", "eval",
                                      "--json", "--device", "cpu"])
    assert json.loads(r.stdout) == json.loads(given.stdout)
    state = load_checkpoint(run / "final.pt")
    assert state["eval_split"] == "eval"
    state["eval_split"] = "valid"  # as a run whose recipe evaluates on a split this store lacks
    save_checkpoint(tmp_path / "other.pt", state)
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "other.pt"), "--device", "cpu"])
    assert r.exit_code == 2 and "no split 'valid'" in r.output  # the recorded split, not "eval"
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "other.pt"), "--split", "eval", "--json", "--device", "cpu"])
    assert json.loads(r.stdout) == {**json.loads(given.stdout), "checkpoint": str(tmp_path / "other.pt")}
    state["store"] = state["store_absolute"] = str(tmp_path / "moved")
    save_checkpoint(tmp_path / "moved.pt", state)
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "moved.pt")])
    assert r.exit_code == 2 and f"was trained on the store {tmp_path / 'moved'}, which is not there" in r.output


def test_eval_windows_scores_each_stored_clip_over_its_whole_length(trained, tmp_path):
    """`eval --windows` on a store of clips longer than the model's 128 frames: each clip's scores
    are the mean over windows at hand-computed starts of its stored frames, normalised by AST's
    formula; the same as `predict` gives for its audio file (to float16 storage's rounding); plain
    eval scores the first window alone."""
    _, _, run = trained
    seconds = {"high": (0.9, 2.7), "low": (1.5, 3.0)}  # Kaldi frames 88, 268, 148, 298
    starts = {88: [0], 268: [0, 128, 140], 148: [0, 20], 298: [0, 128, 170]}  # the last window ends at the end
    data = tmp_path / "data"
    for split in ("train", "eval"):
        for name, base in (("high", 1500), ("low", 200)):
            (data / split / name).mkdir(parents=True)
            for k, s in enumerate(seconds[name]):
                sf.write(data / split / name / f"{k}.wav", tone(s, freq=base + 40 * k, seed=10 + k), 16000)
    long = tmp_path / "long"
    build_store(BuildConfig(dataset="folder", root=data, out=long, block_clips=4, options={"target_frames": 320}))
    reader = StoreReader(long, "eval")
    assert sorted(reader.frames().tolist()) == sorted(starts)

    def cli_eval(*extra):
        npz = tmp_path / f"scores{len(extra)}.npz"
        res = CliRunner().invoke(main, ["eval", str(run / "final.pt"), "--store", str(long), "--batch-size", "4",
                                        "--device", "cpu", "--json", "--scores", str(npz), *extra])
        assert res.exit_code == 0, res.output
        with np.load(npz) as z:
            return json.loads(res.output[res.output.index("{"):]), dict(zip(z["ids"].tolist(), z["scores"]))

    got, scores = cli_eval("--windows")
    assert got["windows"] == 9 and got["clips"] == 4 and got["notes"] == []
    first, first_scores = cli_eval()
    assert "windows" not in first
    model, _ = load_predictor(run / "final.pt")
    predicted, _ = predict_files(run / "final.pt", [data / "eval"], device="cpu")
    by_id = {"/".join(r.path.split("/")[-2:])[: -len(".wav")]: r for r in predicted}
    for i, clip in enumerate(reader.ids):
        n = int(reader.frames()[i])
        x = torch.from_numpy(reader.features(i)[:n].astype(np.float32))
        x = torch.nn.functional.pad(x, (0, 0, 0, max(0, FRAMES - n)))  # zeros past a short clip's end
        x = torch.stack([x[s:s + FRAMES] for s in starts[n]])
        with torch.no_grad():
            each = torch.softmax(model((x - NORM[0]) / (2 * NORM[1])), -1)
        np.testing.assert_allclose(scores[clip], each.mean(0).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(first_scores[clip], each[0].numpy(), rtol=1e-5, atol=1e-6)
        assert by_id[clip].windows == len(starts[n])
        assert np.abs(by_id[clip].scores - scores[clip]).max() < 1e-3, clip
    res = CliRunner().invoke(main, ["eval", str(run / "final.pt"), "--store", str(long), "--windows",
                                    "--batch-size", "0"])
    assert res.exit_code == 2 and "--batch-size" in res.output  # not a ZeroDivisionError, nor NaN metrics
    # where the store's clips are no longer than the model's, --windows changes nothing, and says so
    same = evaluate_checkpoint(run / "final.pt", device="cpu", windowed=True)
    plain = evaluate_checkpoint(run / "final.pt", device="cpu")
    assert same["accuracy"] == plain["accuracy"] and same["windows"] == same["clips"]
    assert any("one window each, the same scores as without it" in note for note in same["notes"])
