"""The phase trainer: a coarse-to-fine run end to end, exact resume after SIGKILL, DDP on CPU."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from c2fdata.store import create_store_from_arrays
from c2fdata.vocab import Vocabulary
from c2ftrain.checkpoint import load_checkpoint, save_checkpoint
from c2ftrain.recipe import RecipeError, recipe_from_dict
from c2ftrain.experiment import run_experiment
from c2ftrain.phases import swap_into_optimizer
from c2ftrain.trainer import PhaseTrainer

N_CLASSES, T = 4, 64


def toy_split(n, seed):
    """Class k: stripes k+1 mel bins wide, in a random half of the frames. Every patch shows its
    class by content, so even a one-block transformer learns it in a few dozen steps."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(-6, 1, (n, T, 128)).astype(np.float32)
    labels = rng.integers(0, N_CLASSES, n)
    for i, k in enumerate(labels):
        start = rng.integers(0, T // 2)
        stripes = (np.arange(128) // (k + 1)) % 2 == 0
        feats[i, start:start + T // 2, stripes] += 4
    return dict(features=feats, frames=np.full(n, T), labels=[[f"c{k}"] for k in labels],
                ids=[f"{seed}-{i}" for i in range(n)])


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "toy"
    create_store_from_arrays(path, dataset="toy", vocabulary=Vocabulary.from_names([f"c{k}" for k in range(N_CLASSES)]),
                             multi_label=False, splits={"train": toy_split(64, 0), "eval": toy_split(32, 1)},
                             block_clips=16)
    return path


def toy_recipe(store, **data):
    return recipe_from_dict({
        "name": "toy", "store": str(store), "seed": 3,
        "model": {"preset": "tiny", "embed_dim": 32, "depth": 1, "num_heads": 2, "patch_stride": [16, 16]},
        "data": {"batch_size": 16, "backend": "torch", "num_workers": 0, "random_offset": True, **data},
        "optim": {"name": "adamw", "lr": 3e-3, "warmup_steps": 2, "weight_decay": 0.01},
        "eval": {"checkpoint_every_steps": 2},
        "phases": [{"method": "pool-avg", "factor": 4, "steps": 4},
                   {"method": "fshift", "factor": 2, "steps": 4, "reset_optimizer": False},
                   {"method": "none", "factor": 1, "steps": 4}],
        "baseline": {"phases": [{"method": "none", "factor": 1, "steps": 12}], "equal_flops": True},
    })


def test_run_experiment_report(toy_store, tmp_path):
    report = run_experiment(toy_recipe(toy_store), tmp_path / "run", device="cpu")
    assert report["metric_name"] == "accuracy"
    assert [p["method"] for p in report["phases"]] == ["pool-avg", "fshift", "none"]
    assert [p["tokens"] for p in report["phases"]] == [2 + 8 * 1, 2 + 8 * 2, 2 + 8 * 4]
    for key in ("method", "factor", "tokens", "epochs", "flops", "wall_s", "data_loading_share", "metric"):
        assert all(key in p for p in report["phases"])
    c2f, base = report["c2f"], report["baseline"]
    # analytic FLOPs: the coarse phases cost less than full resolution for the same steps
    assert report["phases"][0]["flops"] < report["phases"][1]["flops"] < report["phases"][2]["flops"]
    assert c2f["flops"] < base["flops"] and 0 < report["savings"]["flops"] < 1
    assert abs(report["equal_flops"]["flops"] - c2f["flops"]) / c2f["flops"] < 0.15
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["savings"] == report["savings"]
    assert (tmp_path / "run" / "report.png").stat().st_size > 10_000
    lines = (tmp_path / "run" / "c2f" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all("accuracy" in json.loads(x)["metrics"] for x in lines)
    assert base["metric"] > 0.4  # the toy task is learnable: well above chance (0.25)


def test_checkpoints_load_weights_only_and_eval_cli(toy_store, tmp_path):
    from click.testing import CliRunner

    from c2ftrain.cli import main

    outcome = PhaseTrainer(toy_recipe(toy_store), toy_recipe(toy_store).phases, tmp_path / "c2f", "c2f",
                           device="cpu").run()
    state = torch.load(tmp_path / "c2f" / "checkpoints" / "last.pt", weights_only=True)
    assert state["progress"]["global_step"] == 12 and state["resolution"]["frames"] == T
    final = load_checkpoint(tmp_path / "c2f" / "final.pt")
    assert final["model"]["pos_embed"].shape == (1, 2 + 8 * 4, 32)
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "c2f" / "final.pt"), "--store", str(toy_store), "--json",
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["accuracy"] == outcome.metric
    # what was evaluated is said: the checkpoint, the store, the split and its clips
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "c2f" / "final.pt"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert f"final.pt on {toy_store}, split eval (32 clips, full resolution)" in " ".join(r.output.split())
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "c2f" / "metrics.jsonl"), "--store", str(toy_store)])
    assert r.exit_code == 2 and "is not a c2f checkpoint" in r.output and "delete it" not in r.output
    # every clip's scores for metrics of one's own: the accuracy recomputed from them by hand
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "c2f" / "final.pt"), "--scores", str(tmp_path / "s.npz"),
                                  "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "s.npz") as z:
        ids, scores, targets, classes = z["ids"], z["scores"], z["targets"], z["classes"]
    assert list(classes) == [f"c{k}" for k in range(N_CLASSES)] and scores.shape == (32, N_CLASSES)
    assert sorted(ids) == sorted(f"1-{i}" for i in range(32))  # toy_split(32, 1)'s clips, each once
    truth = dict(zip([f"1-{i}" for i in range(32)], toy_split(32, 1)["labels"]))
    assert [f"c{t}" for t in targets] == [truth[i][0] for i in ids]
    right = sum(int(np.argmax(row)) == t for row, t in zip(scores, targets))
    assert right / 32 == json.loads(r.stdout)["accuracy"] == outcome.metric
    np.testing.assert_allclose(scores.sum(axis=1), 1, rtol=1e-5)  # softmax: single-label
    # a run directory means its coarse-to-fine final.pt
    r = CliRunner().invoke(main, ["eval", str(tmp_path), "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["checkpoint"] == str(tmp_path / "c2f" / "final.pt")
    (tmp_path / "c2f" / "final.pt").rename(tmp_path / "c2f" / "kept.pt")
    r = CliRunner().invoke(main, ["eval", str(tmp_path), "--device", "cpu"])
    assert r.exit_code == 2 and "no final.pt (a run not finished?)" in r.output and "checkpoints/last.pt" in r.output
    (tmp_path / "c2f" / "kept.pt").rename(tmp_path / "c2f" / "final.pt")
    whole = (tmp_path / "c2f" / "final.pt").read_bytes()
    (tmp_path / "copy.bak").write_bytes(whole[: len(whole) // 2])  # a checkpoint cut short, under another name
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "copy.bak"), "--store", str(toy_store)])
    assert r.exit_code == 2 and "truncated" in r.output
    seeds = tmp_path / "seeds"
    for seed in (0, 1):
        (seeds / f"seed-{seed}" / "c2f").mkdir(parents=True)
    shutil.copy(tmp_path / "c2f" / "final.pt", seeds / "seed-0" / "c2f" / "final.pt")  # seed 1 not finished
    r = CliRunner().invoke(main, ["eval", str(seeds)])
    assert r.exit_code == 2 and "holds 2 seeds' runs (seed-0, seed-1)" in " ".join(r.output.split())
    # a clip failing its checksum is left out, counted and said, not scored silently
    damaged = tmp_path / "damaged"
    shutil.copytree(toy_store, damaged)
    shard = damaged / "eval" / "features" / "c" / "0" / "0" / "0"  # block 0
    data = bytearray(shard.read_bytes())
    offset = int(np.frombuffer(data[-(16 * 16 + 4):-4], "<u8").reshape(16, 2)[0, 0])  # clip 0, from the shard index
    data[offset + 10] ^= 0x04
    shard.write_bytes(bytes(data))
    for windows in ([], ["--windows"]):  # through the loader, and clip by clip over windows
        r = CliRunner().invoke(main, ["eval", str(tmp_path / "c2f" / "final.pt"), "--store", str(damaged), "--json",
                                      "--device", "cpu", *windows])
        assert r.exit_code == 0 and json.loads(r.stdout)["skipped_clips"] == 1, r.output
        assert (json.loads(r.stdout)["clips"], json.loads(r.stdout)["split"]) == (31, "eval")  # 32 made, 1 left out
        assert "1 clip(s) failed their checksum and were left out" in " ".join(r.stderr.split())


def test_eval_feeds_a_checkpoint_as_it_was_trained(toy_store, tmp_path):
    """A recipe's own clip length (a crop of the store's clips) and normalisation are recorded in
    the checkpoint: `c2ftrain eval` then reproduces the run's final metric, not the metric of the
    store's full clips under the store's statistics."""
    from c2ftrain.evaluate import evaluate_checkpoint

    recipe = recipe_from_dict({**toy_recipe(toy_store, target_frames=T // 2, norm_mean=-2.0, norm_std=0.7).to_dict(),
                               "phases": [{"method": "pool-avg", "factor": 2, "steps": 6},
                                          {"method": "none", "factor": 1, "steps": 6}]})
    outcome = PhaseTrainer(recipe, recipe.phases, tmp_path, "c2f", device="cpu").run()
    inputs = load_checkpoint(tmp_path / "final.pt")["inputs"]
    assert (inputs["target_frames"], inputs["norm_mean"], inputs["norm_std"]) == (T // 2, -2.0, 0.7)
    assert evaluate_checkpoint(tmp_path / "final.pt", toy_store, device="cpu") == {
        "accuracy": outcome.metric, "skipped_clips": 0, "checkpoint": str(tmp_path / "final.pt"),
        "store": str(toy_store), "split": "eval", "clips": 32, "notes": []}


def test_a_split_the_store_lacks_is_named_by_the_recipe_key_that_asks_for_it(toy_store, tmp_path):
    """Kinetics-Sounds trees have val/, the recipe evaluates on test: the key and a split to use."""
    from c2ftrain.experiment import check_recipe_against_store

    other = tmp_path / "tv"
    create_store_from_arrays(other, dataset="toy", vocabulary=Vocabulary.from_names([f"c{k}" for k in range(N_CLASSES)]),
                             multi_label=False, splits={"train": toy_split(16, 0), "val": toy_split(16, 1)},
                             block_clips=16)
    with pytest.raises(RecipeError, match=r"data.eval_split names the split 'eval', which .* does not have \(its "
                                          r"splits: train, val\); e.g. --set data.eval_split=val$"):
        check_recipe_against_store(toy_recipe(other))
    with pytest.raises(RecipeError, match=r"data.extra_eval_splits names the split 'test'.*train, val\); leave it "
                                          r"out: --set 'data.extra_eval_splits=\[\]'$"):
        check_recipe_against_store(toy_recipe(other, eval_split="val", extra_eval_splits=["test"]))
    with pytest.raises(RecipeError, match=r"data.train_split names the split 'tr'.*e.g. --set data.train_split=train$"):
        check_recipe_against_store(toy_recipe(other, eval_split="val", train_split="tr"))
    check_recipe_against_store(toy_recipe(other, eval_split="val"))


def test_eval_finds_a_relative_training_store_from_another_directory(toy_store, tmp_path, monkeypatch):
    """A recipe's relative store is the working directory's; a checkpoint also records where that
    was, so `c2ftrain eval` without --store works from elsewhere, and predict too."""
    from click.testing import CliRunner

    from c2ftrain.cli import main

    monkeypatch.chdir(toy_store.parent)
    recipe = recipe_from_dict({**toy_recipe("toy").to_dict(), "phases": [{"method": "none", "factor": 1, "steps": 2}]})
    PhaseTrainer(recipe, recipe.phases, tmp_path / "run", "c2f", device="cpu").run()
    state = load_checkpoint(tmp_path / "run" / "final.pt")
    assert (state["store"], state["store_absolute"]) == ("toy", str(toy_store))
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "run"), "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["store"] == str(toy_store)
    (tmp_path / "toy").mkdir()  # a folder of that name here, not the store: the recorded one is taken
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "run"), "--json", "--device", "cpu"])
    assert r.exit_code == 0 and json.loads(r.stdout)["store"] == str(toy_store), r.output
    # the scores file is not a checkpoint, though a zip: said so, not "damaged"
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "run"), "--scores", str(tmp_path / "s.npz"), "--device", "cpu"])
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "s.npz")])
    assert r.exit_code == 2 and "is not a c2f checkpoint: those are final.pt" in " ".join(r.output.split())


def test_eval_says_how_many_clips_of_the_split_failed_in_the_build(tmp_path):
    import soundfile as sf
    from conftest import tone

    from c2fdata.build import BuildConfig, build_store
    from c2ftrain.evaluate import evaluate_checkpoint

    for split, n in (("train", 4), ("eval", 3)):
        for c in ("a", "b"):
            (tmp_path / "d" / split / c).mkdir(parents=True)
            for k in range(n):
                sf.write(tmp_path / "d" / split / c / f"{k}.wav", tone(0.7, freq=300 + 200 * k + 900 * (c == "b")), 16000)
    (tmp_path / "d" / "eval" / "a" / "bad.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    build_store(BuildConfig(dataset="folder", root=tmp_path / "d", out=tmp_path / "s", options={"target_frames": 64}))
    recipe = recipe_from_dict({**toy_recipe(tmp_path / "s").to_dict(), "phases": [{"method": "none", "factor": 1, "steps": 1}],
                               "baseline": {"phases": []}})
    PhaseTrainer(recipe, recipe.phases, tmp_path / "run", "c2f", device="cpu").run()
    out = evaluate_checkpoint(tmp_path / "run" / "final.pt", device="cpu")
    assert out["clips"] == 6 and out["notes"] == [
        f"1 clip(s) of eval failed in the build and are not scored (`c2fdata info {tmp_path / 's'} --problems` says why)"]


def test_clips_shorter_than_the_model_takes(toy_store, tmp_path):
    """Training on a crop longer than the store's clips is refused (every clip would be padding);
    evaluating a model on a store of shorter clips is done, with a note saying they were padded."""
    from c2ftrain.evaluate import evaluate_checkpoint
    from c2ftrain.experiment import check_recipe_against_store

    with pytest.raises(RecipeError, match=f"data.target_frames = {2 * T} is longer than the clips of .*at most {T} frames"):
        check_recipe_against_store(toy_recipe(toy_store, target_frames=2 * T))
    check_recipe_against_store(toy_recipe(toy_store, target_frames=T))
    short = tmp_path / "short"
    halves = {name: toy_split(n, seed) for name, n, seed in (("train", 16, 4), ("eval", 16, 5))}
    for split in halves.values():
        split["features"], split["frames"] = split["features"][:, :T // 2], np.full(16, T // 2)
    create_store_from_arrays(short, dataset="toy", vocabulary=Vocabulary.from_names([f"c{k}" for k in range(N_CLASSES)]),
                             multi_label=False, splits=halves, block_clips=16)
    recipe = recipe_from_dict({**toy_recipe(toy_store).to_dict(), "phases": [{"method": "none", "factor": 1, "steps": 2}]})
    PhaseTrainer(recipe, recipe.phases, tmp_path / "run", "c2f", device="cpu").run()
    [note] = evaluate_checkpoint(tmp_path / "run" / "final.pt", short, device="cpu")["notes"]
    assert f"takes {T} frames" in note and f"at most {T // 2}" in note and f"by at least {T // 2} frames" in note
    assert evaluate_checkpoint(tmp_path / "run" / "final.pt", toy_store, device="cpu")["notes"] == []


def test_cli_run_errors(tmp_path):
    from click.testing import CliRunner

    from c2ftrain.cli import main

    r = CliRunner().invoke(main, ["run", "demo", "--set", f"store=\"{tmp_path / 'none'}\""])
    assert r.exit_code == 2 and "build it first" in r.output
    r = CliRunner().invoke(main, ["run", "no_such_recipe"])
    assert r.exit_code == 2 and "shipped recipes are" in r.output


def test_fused_adam_trains_as_the_default_adam(toy_store, tmp_path):
    """optim.fused: torch's one-kernel update; a run through three phases (moments carried into
    the second) and its checkpoints end where the default (for-each) update ends, up to rounding."""
    import dataclasses

    recipe = toy_recipe(toy_store)
    # a strong weight decay (0.5 x lr 3e-3 x 12 steps ~ 2% of each weight), so that an update that
    # dropped it, or a parameter group, would miss by far more than rounding does (up to ~3e-5)
    recipe = dataclasses.replace(recipe, optim=dataclasses.replace(recipe.optim, weight_decay=0.5))
    fused = dataclasses.replace(recipe, optim=dataclasses.replace(recipe.optim, fused=True))
    ref = PhaseTrainer(recipe, recipe.phases, tmp_path / "ref", "c2f", device="cpu")
    ref.run()
    run = PhaseTrainer(fused, fused.phases, tmp_path / "fused", "c2f", device="cpu")
    run.run()
    a = load_checkpoint(tmp_path / "ref" / "final.pt")["model"]
    b = load_checkpoint(tmp_path / "fused" / "final.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=2e-4)


def test_every_step_trains_in_training_mode_and_evaluations_in_eval_mode(toy_store, tmp_path, monkeypatch):
    """Evaluations come between phases: the steps after them must still train with dropout and
    drop path on (a model left in eval mode would train coarse-to-fine's later phases without
    them, the baseline's single phase with them), and the evaluations must see them off."""
    import dataclasses

    from c2ftrain import evaluate, trainer

    modes = {"train": [], "eval": []}
    real_step, real_scores = trainer.train_step, evaluate.class_scores

    def step(net, *args, **kw):
        modes["train"].append(net.training)
        return real_step(net, *args, **kw)

    def scores(model, *args, **kw):
        modes["eval"].append(model.training)
        return real_scores(model, *args, **kw)

    monkeypatch.setattr(trainer, "train_step", step)
    monkeypatch.setattr(evaluate, "class_scores", scores)
    recipe = toy_recipe(toy_store)
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, drop_path_rate=0.1))
    PhaseTrainer(recipe, recipe.phases, tmp_path / "run", "c2f", device="cpu").run()
    assert len(modes["train"]) == 12 and all(modes["train"])
    assert len(modes["eval"]) >= 3 and not any(modes["eval"])


def test_compiled_training_equals_eager(toy_store, tmp_path, monkeypatch):
    """model.compile wraps the train step's model in torch.compile, anew in each phase (each has
    its own shapes and positional table), and trains the model that is checkpointed. Dynamo
    traces for real here; its graphs run as traced (inductor would compile C++ for minutes on
    this CPU), so the run must equal the eager one exactly."""
    import torch._dynamo

    graphs, real_compile = [], torch.compile

    def traced_only(model, mode=None):
        def backend(gm, example_inputs):
            graphs.append(mode)
            return gm.forward

        return real_compile(model, backend=backend)

    monkeypatch.setattr(torch, "compile", traced_only)
    torch._dynamo.reset()
    eager = toy_recipe(toy_store)
    compiled = recipe_from_dict({**eager.to_dict(), "model": {**eager.to_dict()["model"], "compile": "reduce-overhead"}})
    try:
        a = PhaseTrainer(compiled, compiled.phases, tmp_path / "compiled", "c2f", device="cpu").run()
    finally:
        torch._dynamo.reset()
    b = PhaseTrainer(eager, eager.phases, tmp_path / "eager", "c2f", device="cpu").run()
    assert len(graphs) >= len(eager.phases) and set(graphs) == {"reduce-overhead"}
    assert [h["metrics"] for h in a.history] == [h["metrics"] for h in b.history]
    wa, wb = (load_checkpoint(tmp_path / k / "final.pt")["model"] for k in ("compiled", "eager"))
    assert wa.keys() == wb.keys()  # the model's own names, not the compiled wrapper's (_orig_mod.)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)
    with pytest.raises(RecipeError, match="model.compile must be \"none\" or one of default, reduce-overhead"):
        recipe_from_dict({**eager.to_dict(), "model": {**eager.to_dict()["model"], "compile": "fast"}})


def test_kept_optimizer_state_still_trains_the_new_pos_embed(toy_store):
    from c2ftrain.model import AST, ast_config
    from c2ftrain.trainer import make_optimizer

    recipe = toy_recipe(toy_store)
    model = AST(ast_config("tiny", embed_dim=32, depth=1, num_heads=2, target_frames=T, patch_stride=(16, 16), num_classes=4))
    opt = make_optimizer(recipe, model, 1e-2)
    replaced = model.set_time_resolution(T // 4)
    swap_into_optimizer(opt, replaced)
    before = model.pos_embed.detach().clone()
    model(torch.randn(2, T // 4, 128)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.pos_embed.detach())
    assert all(p is not old for g in opt.param_groups for p in g["params"] for old, _, _ in replaced)


MIXUPS = {"dataset": dict(mixup=0.5, mixup_partner="dataset", mixup_domain="power", freq_mask_bins=8),
          "batch": dict(mixup=0.5, mixup_partner="batch")}


# the step whose first checkpoint the run is killed after, and the progress that checkpoint holds
KILLS = {
    "mid-phase": (6, {"phase": 1, "epoch": 0, "batch": 2, "phase_step": 2, "global_step": 6}),
    # the phase's last step, checkpointed inside the epoch before the epoch's end is counted and
    # evaluated: a resume must still end that epoch (it once went straight on to the next phase,
    # the phase's evaluation lost; found by the GPU check, whose kill came late on a fast GPU)
    "phase-end": (4, {"phase": 0, "epoch": 0, "batch": 4, "phase_step": 4, "global_step": 4}),
}


@pytest.mark.parametrize("partner, kill", [("dataset", "mid-phase"), ("batch", "mid-phase"), ("dataset", "phase-end")])
def test_sigkill_mid_phase_then_resume_is_exact(toy_store, tmp_path, partner, kill):
    """Kill the run (SIGKILL) right after a checkpoint, mid-phase 2 and mid-epoch, or at phase 1's
    last step before its evaluation; `--resume` ends with exactly the metrics of an uninterrupted
    run (mixup on, its partner from the whole set (the loader's draws) or from the batch (the
    trainer's): its draws must not depend on what else drew from torch's global generator)."""
    kill_step, progress = KILLS[kill]
    mix = MIXUPS[partner]
    ref = PhaseTrainer(toy_recipe(toy_store, **mix), toy_recipe(toy_store, **mix).phases, tmp_path / "ref",
                       "c2f", device="cpu").run()
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import torch
        torch.set_num_threads({torch.get_num_threads()})  # same float summation order as the parent
        import c2ftrain.trainer as tr
        from test_trainer import toy_recipe
        real = tr.save_checkpoint
        def save_then_die(path, payload):
            real(path, payload)
            if payload["progress"]["global_step"] == {kill_step}:
                os.kill(os.getpid(), signal.SIGKILL)
        tr.save_checkpoint = save_then_die
        r = toy_recipe({str(toy_store)!r}, **{mix!r})
        tr.PhaseTrainer(r, r.phases, {str(out)!r}, "c2f", device="cpu").run()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["progress"] == progress
    resumed = PhaseTrainer(toy_recipe(toy_store, **mix), toy_recipe(toy_store, **mix).phases, out, "c2f",
                           device="cpu").run(resume=True)
    assert [h["metrics"] for h in resumed.history] == [h["metrics"] for h in ref.history]
    counted = [(r.epochs, r.steps, r.samples, r.ended) for r in ref.records]  # each phase's own count
    assert [(r.epochs, r.steps, r.samples, r.ended) for r in resumed.records] == counted
    a = load_checkpoint(out / "final.pt")["model"]
    b = load_checkpoint(tmp_path / "ref" / "final.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def toy_toml(toy_store, path):
    """The toy recipe's two phases (4 + 4 steps, global batch 16) as a recipe file, for commands."""
    path.write_text(textwrap.dedent(f"""
        name = "toy"
        store = "{toy_store}"
        seed = 3
        [model]
        preset = "tiny"
        embed_dim = 32
        depth = 1
        num_heads = 2
        patch_stride = [16, 16]
        [data]
        batch_size = 16  # global: 8 per rank
        backend = "torch"
        num_workers = 0
        [optim]
        name = "adamw"
        lr = 3e-3
        warmup_steps = 2
        weight_decay = 0.01
        [[phases]]
        method = "pool-avg"
        factor = 4
        steps = 4
        [[phases]]
        method = "none"
        factor = 1
        steps = 4
    """))
    return path


def test_a_terminated_run_says_how_to_resume(toy_store, tmp_path):
    """`kill` (SIGTERM) or Ctrl-C mid-run: the command says how to go on (not click's bare
    "Aborted!"), and `--resume` finishes the run."""
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal
        import c2ftrain.trainer as tr
        from c2ftrain.cli import main
        real = tr.save_checkpoint
        def save_then_stop(path, payload):
            real(path, payload)
            if payload.get("progress", {{}}).get("global_step") == 4:  # phase 1's last checkpoint
                os.kill(os.getpid(), signal.SIGTERM)
        tr.save_checkpoint = save_then_stop
        main(["run", {str(toy_toml(toy_store, tmp_path / "toy.toml"))!r}, "--no-baseline", "--device", "cpu",
              "--out", {str(out)!r}])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    said = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and f"interrupted; finished runs and checkpoints are kept: continue with " \
                                    f"`c2ftrain run --resume {out}`" in said, proc.stderr[-2000:]
    assert load_checkpoint(out / "c2f" / "checkpoints" / "last.pt")["progress"]["global_step"] == 4
    from click.testing import CliRunner

    from c2ftrain.cli import main

    r = CliRunner().invoke(main, ["run", "--resume", str(out), "--device", "cpu"])
    assert r.exit_code == 0 and "resumed from" in r.output and (out / "c2f" / "outcome.json").is_file(), r.output


def test_a_run_directory_in_use_is_refused_until_its_process_ends(toy_store, tmp_path):
    """`--resume DIR` while DIR's run still trains would resume from the same checkpoint and
    interleave both processes' checkpoints and metrics: it is refused, naming the process. Once
    that process is gone (SIGKILL: no clean-up ran), the directory is free again."""
    import time

    from click.testing import CliRunner

    from c2ftrain.cli import main

    out, paused = tmp_path / "run", tmp_path / "paused"
    script = textwrap.dedent(f"""
        import time
        import c2ftrain.trainer as tr
        from c2ftrain.cli import main
        real = tr.save_checkpoint
        def save_then_wait(path, payload):
            real(path, payload)
            if payload.get("progress", {{}}).get("global_step") == 4:
                open({str(paused)!r}, "w").close()
                time.sleep(600)
        tr.save_checkpoint = save_then_wait
        main(["run", {str(toy_toml(toy_store, tmp_path / "toy.toml"))!r}, "--no-baseline", "--device", "cpu",
              "--out", {str(out)!r}])
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not paused.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert paused.exists(), "the first run did not reach its checkpoint"
        config = (out / "config.json").read_text()
        r = CliRunner().invoke(main, ["run", "--resume", str(out), "--device", "cpu"])
        said = " ".join(r.output.split())
        assert r.exit_code == 2 and f"{out} is in use by another process (c2ftrain run, pid {proc.pid} on " in said, r.output
        assert (out / "config.json").read_text() == config  # nothing of the first run's touched
    finally:
        proc.kill()
        proc.wait()
    r = CliRunner().invoke(main, ["run", "--resume", str(out), "--device", "cpu"])
    assert r.exit_code == 0 and "resumed from" in r.output, r.output


def test_ddp_two_cpu_processes_match_one(toy_store, tmp_path):
    """torchrun, 2 ranks sharing a global batch of 16 (gloo) == 1 process x batch 16."""
    rec = toy_recipe(toy_store)
    recipe_toml = toy_toml(toy_store, tmp_path / "toy.toml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
         "-m", "c2ftrain", "run", str(recipe_toml), "--no-baseline", "--device", "cpu", "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("report: ") == 1 and proc.stdout.count("recipe toy") == 1  # rank 0 speaks alone
    assert "Grad strides do not match bucket view strides" not in proc.stderr  # every parameter's gradient fits DDP
    single_recipe = recipe_from_dict({**rec.to_dict(), "data": {**rec.to_dict()["data"], "batch_size": 16},
                                      "phases": [{"method": "pool-avg", "factor": 4, "steps": 4},
                                                 {"method": "none", "factor": 1, "steps": 4}],
                                      "baseline": {}, "eval": {}})
    single = PhaseTrainer(single_recipe, single_recipe.phases, tmp_path / "one", "c2f", device="cpu").run()
    ddp = json.loads((tmp_path / "ddp" / "c2f" / "outcome.json").read_text())
    assert ddp["records"][0]["samples"] == single.records[0].samples == 64
    a = load_checkpoint(tmp_path / "ddp" / "c2f" / "final.pt")["model"]
    b = load_checkpoint(tmp_path / "one" / "final.pt")["model"]
    # Same samples per step and averaged gradients: equal up to float summation order, which
    # Adam amplifies for near-zero gradients to ~1e-5 after 8 steps (a wrong sharding or a
    # missing all-reduce differs by ~1e-2).
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=2e-4)
    assert abs(ddp["metric"] - single.metric) <= 1 / 32 + 1e-9  # at most one eval clip apart


def test_resume_from_a_checkpoint_of_the_earlier_format(toy_store, tmp_path):
    """Checkpoints written before the RNG states became a dict ({"cpu", "cuda"}) held the CPU
    state as a bare tensor; they still resume, and to the same result."""
    from c2ftrain.checkpoint import save_checkpoint

    r = toy_recipe(toy_store)
    ref = PhaseTrainer(r, r.phases, tmp_path / "ref", "c2f", device="cpu").run()
    out = tmp_path / "old"
    PhaseTrainer(r, r.phases, out, "c2f", device="cpu").run()
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert set(state["rng"]) == {"cpu"}
    state["rng"] = state["rng"]["cpu"]
    save_checkpoint(out / "checkpoints" / "last.pt", state)
    events = []
    resumed = PhaseTrainer(r, r.phases, out, "c2f", device="cpu", on_event=events.append).run(resume=True)
    assert resumed.metric == ref.metric
    said = [e for e in events if e["event"] == "resumed"]  # where it took up, for the console
    assert len(said) == 1 and said[0]["step"] == state["progress"]["global_step"] > 0


def test_corrupt_checkpoint_is_named_not_unpickled(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"last.pt is not a c2f checkpoint \(truncated, or not written by c2f"):
        load_checkpoint(bad)


def test_a_changed_byte_in_a_checkpoint_is_refused_not_loaded(tmp_path):
    """torch.load does not check the archive's CRC-32s: a flipped byte in a weight loads as
    another weight (shown below). load_checkpoint checks them, and says what to do."""
    path = tmp_path / "last.pt"
    weight = torch.arange(4096, dtype=torch.float32)
    save_checkpoint(path, {"model": {"w": weight}, "step": 3})
    raw = bytearray(path.read_bytes())
    at = raw.find(weight[1000:1004].numpy().tobytes())  # inside the tensor's stored bytes
    raw[at] ^= 0x40
    path.write_bytes(bytes(raw))
    loaded = torch.load(path, weights_only=True)["model"]["w"]  # the reference: silently different
    assert not torch.equal(loaded, weight)
    with pytest.raises(ValueError, match=r"last.pt is damaged: its entry .*data/0 fails its CRC-32.*restore it "
                                         r"from a copy, or delete it"):
        load_checkpoint(path)
    path.write_bytes(bytes(raw[: len(raw) // 2]))  # truncated
    with pytest.raises(ValueError, match=r"last.pt is not a c2f checkpoint \(truncated.*delete it"):
        load_checkpoint(path)
    # torch can be told to write no CRCs (0 in the archive): such a file is loaded, not refused
    torch.serialization.set_crc32_options(False)
    try:
        save_checkpoint(path, {"model": {"w": weight}})
    finally:
        torch.serialization.set_crc32_options(True)
    assert torch.equal(load_checkpoint(path)["model"]["w"], weight)


def test_trainer_starts_from_the_recipes_init(toy_store, tmp_path):
    """model.init names a checkpoint: the trainer loads it before the first step (reported in an
    "init" event); a missing file stops the run before training, naming the file."""
    from c2ftrain.init_weights import InitError

    r = toy_recipe(toy_store)
    PhaseTrainer(r, r.phases, tmp_path / "first", "c2f", device="cpu").run()
    d = r.to_dict()
    d["model"]["init"] = str(tmp_path / "first" / "final.pt")
    warm = recipe_from_dict(d)
    events = []
    PhaseTrainer(warm, warm.phases, tmp_path / "warm", "c2f", device="cpu", on_event=events.append).run()
    init = next(e for e in events if e["event"] == "init")
    assert init["format"] == "c2f" and init["loaded"] > 0 and init["fresh"] == 0
    d["model"]["init"] = str(tmp_path / "missing.pt")
    missing = recipe_from_dict(d)
    with pytest.raises(InitError, match="missing.pt"):
        PhaseTrainer(missing, missing.phases, tmp_path / "m", "c2f", device="cpu").run()


def test_global_batch_is_shared_by_ranks_and_decay_scope():
    from c2ftrain.distributed import Dist
    from c2ftrain.model import AST, ast_config
    from c2ftrain.trainer import make_optimizer, pipeline_config, rank_batch

    assert rank_batch(12, Dist(world_size=4, grouped=True)) == 3
    with pytest.raises(ValueError, match="global batch and must divide among 8 ranks"):
        rank_batch(12, Dist(world_size=8, grouped=True))
    recipe = recipe_from_dict({"name": "t", "store": "s", "phases": [{"epochs": 1}],
                               "data": {"batch_size": 12, "norm_mean": -4.2677393, "norm_std": 4.5689974,
                                        "target_frames": 512}})
    cfg = pipeline_config(recipe, "train", Dist(rank=1, world_size=2, grouped=True), "cpu")
    assert (cfg.batch_size, cfg.rank, cfg.world_size, cfg.drop_last) == (6, 1, 2, True)
    assert (cfg.norm_mean, cfg.norm_std, cfg.target_frames) == (-4.2677393, 4.5689974, 512)
    model = AST(ast_config("tiny", embed_dim=32, depth=1, num_heads=2, target_frames=64, num_classes=3))
    for decay, exempt in (("matrices", 0.0), ("all", 0.01)):
        r = recipe_from_dict({"name": "t", "store": "s", "phases": [{"epochs": 1}],
                              "optim": {"weight_decay": 0.01, "decay": decay}})
        groups = make_optimizer(r, model, 1e-3).param_groups
        pos = next(g for g in groups if any(p is model.pos_embed for p in g["params"]))
        assert pos["weight_decay"] == exempt


def test_weight_averaging_of_chosen_epochs(toy_store, tmp_path):
    """eval.average_epochs = [first, last]: the mean of the full-resolution weights at the end of
    those run epochs, evaluated beside the final model and saved as final_averaged.pt."""
    d = toy_recipe(toy_store).to_dict()  # 3 phases of 4 steps = 3 epochs of 4 batches
    d["eval"]["average_epochs"] = [3, 3]
    one = recipe_from_dict(d)
    out = PhaseTrainer(one, one.phases, tmp_path / "one", "c2f", device="cpu").run()
    final = load_checkpoint(tmp_path / "one" / "final.pt")["model"]
    averaged = load_checkpoint(tmp_path / "one" / "final_averaged.pt")
    assert averaged["epochs"] == 1 and out.metrics["averaged/epochs"] == 1
    for k in final:  # the mean of one epoch is that epoch's weights
        torch.testing.assert_close(averaged["model"][k], final[k], rtol=0, atol=0)
    assert out.metrics["averaged/accuracy"] == out.metric
    d["eval"]["average_epochs"] = [1, 3]
    d["data"].update(norm_mean=-2.0, norm_std=0.7)  # the recipe's own: eval must feed the average with it too
    three = recipe_from_dict(d)
    out = PhaseTrainer(three, three.phases, tmp_path / "three", "c2f", device="cpu").run()
    avg = load_checkpoint(tmp_path / "three" / "final_averaged.pt")["model"]
    assert out.metrics["averaged/epochs"] == 3
    from c2ftrain.evaluate import evaluate_checkpoint

    assert (evaluate_checkpoint(tmp_path / "three" / "final_averaged.pt", toy_store, device="cpu")
            == {"accuracy": out.metrics["averaged/accuracy"], "skipped_clips": 0,
                "checkpoint": str(tmp_path / "three" / "final_averaged.pt"), "store": str(toy_store),
                "split": "eval", "clips": 32, "notes": []})
    assert load_checkpoint(tmp_path / "three" / "final_averaged.pt")["inputs"]["norm_mean"] == -2.0
    assert avg["pos_embed"].shape == final["pos_embed"].shape  # coarse epochs enter at full resolution
    assert not torch.equal(avg["head.weight"], final["head.weight"])
    with pytest.raises(RecipeError, match="average_epochs"):
        recipe_from_dict({**d, "eval": {"average_epochs": [3, 1]}})


def test_corrupt_clip_is_skipped_and_counted_in_the_outcome(toy_store, tmp_path):
    """A flipped byte in one training clip: the run never trains on it (the loader drops it from
    its batch, with a warning) and its outcome says how many clips were skipped."""
    import shutil

    store = tmp_path / "store"
    shutil.copytree(toy_store, store)
    block, row = 16, 5
    shard = store / "train" / "features" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    index = np.frombuffer(bytes(data[-(16 * block + 4):-4]), "<u8").reshape(block, 2)
    data[int(index[row, 0]) + 100] ^= 0x04  # inside the clip's bytes: shape and values stay plausible
    shard.write_bytes(bytes(data))
    d = toy_recipe(store).to_dict()
    r = recipe_from_dict(d)
    out = PhaseTrainer(r, r.phases, tmp_path / "run", "c2f", device="cpu").run()
    assert out.metrics["skipped_clips"] == 3  # the clip comes up once in each of the 3 epochs
    clean = PhaseTrainer(toy_recipe(toy_store), r.phases, tmp_path / "clean", "c2f", device="cpu").run()
    assert clean.metrics["skipped_clips"] == 0


def test_plateau_ends_a_coarse_phase_and_the_budget_gives_the_rest(toy_store, tmp_path):
    """until = "plateau" (patience 1, an improvement of 2.0 that accuracy can never make) ends
    the coarse phase after 2 of its 6 epochs; the last phase (until = "budget") gets the FLOPs of
    budget_full_epochs minus what the coarse phase spent; a resumed run agrees."""
    from c2ftrain.phases import full_resolution

    d = toy_recipe(toy_store).to_dict()
    d["eval"]["checkpoint_every_steps"] = 0
    d["budget_full_epochs"] = 2.0
    d["phases"] = [{"method": "pool-avg", "factor": 4, "epochs": 6, "until": "plateau", "patience": 1,
                    "min_delta": 2.0},
                   {"method": "none", "factor": 1, "until": "budget", "reset_optimizer": False}]
    d["baseline"] = {"phases": [{"method": "none", "factor": 1, "epochs": 2}]}
    r = recipe_from_dict(d)
    trainer = PhaseTrainer(r, r.phases, tmp_path / "run", "c2f", device="cpu")
    out = trainer.run()
    coarse, full = out.records
    assert (coarse.ended, coarse.epochs, full.ended) == ("plateau", 2, "length")
    per_step = 16 * full_resolution(trainer.cfg).train_flops_per_sample(trainer.cfg)  # batch 16
    budget = 2.0 * 4 * per_step  # 4 steps per epoch
    assert abs(coarse.flops + full.flops - budget) <= per_step / 2
    assert full.steps == round((budget - coarse.flops) / per_step)
    with pytest.raises(RecipeError, match="until = \"budget\" needs budget_full_epochs"):
        recipe_from_dict({**d, "budget_full_epochs": None})
    fixed = recipe_from_dict({**d, "phases": [{"method": "fshift", "factor": 2, "epochs": 1},
                                              {"method": "none", "factor": 1, "epochs": 1}]})
    assert fixed.budget_full_epochs == 2.0  # inert without a budget phase: the run's key ignores it
    from c2ftrain.experiment import run_key
    assert run_key(fixed, fixed.phases) == run_key(recipe_from_dict({**d, "budget_full_epochs": None, "phases": [
        {"method": "fshift", "factor": 2, "epochs": 1}, {"method": "none", "factor": 1, "epochs": 1}]}), fixed.phases)
    with pytest.raises(RecipeError, match="explicit \\[baseline\\]"):
        recipe_from_dict({**d, "baseline": {}})


def test_coarse_phases_evaluated_at_their_own_resolution_only(toy_store, tmp_path):
    """eval.full_resolution_during_coarse = false: a coarse phase's evaluations skip the
    full-resolution pass except at the phase's end (a fixed length, or a plateau known only after
    the phase-resolution evaluation); training, the phase-resolution metrics, the phase ends and
    the final metrics are those of the run that evaluates everything."""
    from c2ftrain.cli import _printer
    from c2ftrain.report import build_report, eval_curve, write_report

    d = toy_recipe(toy_store).to_dict()
    d["eval"]["checkpoint_every_steps"] = 0
    d["budget_full_epochs"] = 3.0
    d["phases"] = [{"method": "fshift", "factor": 2, "epochs": 3},
                   {"method": "pool-avg", "factor": 4, "epochs": 6, "until": "plateau", "patience": 1,
                    "min_delta": 2.0},
                   {"method": "none", "factor": 1, "until": "budget"}]
    d["baseline"] = {"phases": [{"method": "none", "factor": 1, "epochs": 3}]}
    everything = recipe_from_dict(d)
    d["eval"]["full_resolution_during_coarse"] = False
    own = recipe_from_dict(d)
    ref = PhaseTrainer(everything, everything.phases, tmp_path / "ref", "c2f", device="cpu").run()
    out = PhaseTrainer(own, own.phases, tmp_path / "own", "c2f", device="cpu", on_event=_printer({})).run()

    assert [(r.epochs, r.steps, r.ended) for r in out.records] == [(r.epochs, r.steps, r.ended) for r in ref.records]
    assert [r.ended for r in out.records] == ["length", "plateau", "length"]
    assert len(out.history) == len(ref.history) == 3 + 2 + 1
    for mine, theirs in zip(out.history, ref.history):
        assert mine.get("metrics_at_phase_resolution") == theirs.get("metrics_at_phase_resolution")
    # full resolution: the last evaluation of each coarse phase, and every full-resolution one
    assert [("metrics" in h) for h in out.history] == [False, False, True, False, True, True]
    assert all(h["metrics"] == ref.history[i]["metrics"] for i, h in enumerate(out.history) if "metrics" in h)
    assert [r.metric for r in out.records] == [r.metric for r in ref.records]
    assert out.metrics == ref.metrics
    # the curves of the report follow the full-resolution evaluations
    assert eval_curve([out]) == [ref.history[i]["metrics"]["accuracy"] for i in (2, 4, 5)]
    write_report(tmp_path / "own", build_report(own, [{"c2f": out}], [3]), [{"c2f": out}])
    assert (tmp_path / "own" / "report.png").stat().st_size > 10_000

    # killed right after the checkpoint of the plateau phase's first epoch, then resumed: the
    # same evaluations (which ones ran at full resolution included) and the same end
    class Killed(Exception):
        pass

    class KilledAfterFourCheckpoints(PhaseTrainer):
        saved = 0

        def save(self, *args):
            super().save(*args)
            KilledAfterFourCheckpoints.saved += 1
            if KilledAfterFourCheckpoints.saved == 4:  # 3 epochs of phase 1, 1 of phase 2
                raise Killed

    with pytest.raises(Killed):
        KilledAfterFourCheckpoints(own, own.phases, tmp_path / "killed", "c2f", device="cpu").run()
    resumed = PhaseTrainer(own, own.phases, tmp_path / "killed", "c2f", device="cpu").run(resume=True)
    untimed = lambda hist: [{k: v for k, v in h.items() if k != "cum_wall_s"} for h in hist]  # noqa: E731
    assert untimed(resumed.history) == untimed(out.history)
    assert [r.ended for r in resumed.records] == ["length", "plateau", "length"]
    assert resumed.metrics == out.metrics
    with pytest.raises(RecipeError, match=r"\[eval\] full_resolution_during_coarse: expected true or false, got 'no'"):
        recipe_from_dict({**d, "eval": {"full_resolution_during_coarse": "no"}})
    with pytest.raises(RecipeError, match="full_resolution_during_coarse must be true or false"):  # the Python API
        dataclasses.replace(own.eval, full_resolution_during_coarse="no")


def test_mixup_partner_decides_who_mixes(toy_store):
    """"dataset" (AST's): the loader mixes, the trainer does not; "batch": the trainer mixes the
    served features and the loader serves them unmixed; "power" needs the loader's partner."""
    from c2ftrain.distributed import Dist
    from c2ftrain.trainer import pipeline_config

    dataset = pipeline_config(toy_recipe(toy_store, mixup=0.5, mixup_domain="power"), "train", Dist(), "cpu")
    assert (dataset.mixup, dataset.mixup_domain, dataset.mask_value) == (0.5, "power", "ast")
    batch = pipeline_config(toy_recipe(toy_store, mixup=0.5, mixup_partner="batch"), "train", Dist(), "cpu")
    assert batch.mixup == 0.0
    with pytest.raises(RecipeError, match="needs mixup_partner = \"dataset\""):
        toy_recipe(toy_store, mixup=0.5, mixup_partner="batch", mixup_domain="power")
    for bad, message in ((dict(mixup_partner="epoch"), "mixup_partner"), (dict(mask_value="mean"), "mask_value"),
                         (dict(mixup_domain="wave"), "mixup_domain"), (dict(mixup=0.5, mixup_alpha=0), "mixup_alpha")):
        with pytest.raises(RecipeError, match=message):
            toy_recipe(toy_store, **bad)


def test_run_wide_decay_has_no_jump_when_a_plateau_ends_early(toy_store, tmp_path, monkeypatch):
    """lr_scope = "run", cosine: the coarse phase (planned at 6 epochs) ends at a plateau after
    2 and the budget phase is sized anew; the rate the optimiser gets goes on falling smoothly
    across the change (it used to drop at once to where the shorter run would be), to its floor."""
    import c2ftrain.trainer as tr

    d = toy_recipe(toy_store, batch_size=32).to_dict()
    d.update(budget_full_epochs=2.0, phases=[
        {"method": "pool-avg", "factor": 4, "until": "plateau", "epochs": 6, "patience": 1, "min_delta": 1.0},
        {"method": "none", "factor": 1, "until": "budget"}])
    d["optim"].update(lr_scope="run", warmup_steps=0, schedule="cosine")
    recipe = recipe_from_dict(d)
    seen, real = [], tr.train_step

    def recording(net, optimizer, *args, **kwargs):
        seen.append(optimizer.param_groups[0]["lr"])
        return real(net, optimizer, *args, **kwargs)

    monkeypatch.setattr(tr, "train_step", recording)
    out = PhaseTrainer(recipe, recipe.phases, tmp_path / "run", "c2f", device="cpu").run()
    assert [r.ended for r in out.records] == ["plateau", "length"] and out.records[0].steps == 4
    steps = np.diff(seen)
    assert (steps < 0).all()  # falling at every step, the phase change included
    # no step falls much more than its neighbours: the change falls within the steps around it
    change = out.records[0].steps - 1
    assert -steps[change] <= 1.5 * max(-steps[change - 1], -steps[change + 1])

    # killed at the first checkpoint after the change and resumed: the same rates and the same end
    class Killed(Exception):
        pass

    class KilledInTheBudgetPhase(PhaseTrainer):
        def save(self, model, optimizer, state):
            super().save(model, optimizer, state)
            if state.progress.phase == 1:
                raise Killed

    uninterrupted = list(seen)
    seen.clear()
    with pytest.raises(Killed):
        KilledInTheBudgetPhase(recipe, recipe.phases, tmp_path / "killed", "c2f", device="cpu").run()
    assert 4 < len(seen) < len(uninterrupted)
    resumed = PhaseTrainer(recipe, recipe.phases, tmp_path / "killed", "c2f", device="cpu").run(resume=True)
    assert seen == uninterrupted and resumed.metrics == out.metrics


def test_evaluations_report_their_batches(toy_store, tmp_path):
    events = []
    recipe = toy_recipe(toy_store)
    PhaseTrainer(recipe, recipe.phases[-1:], tmp_path / "run", "c2f", device="cpu", on_event=events.append).run()
    batches = [e for e in events if e["event"] == "eval_batch"]
    evals = [e for e in events if e["event"] == "eval"]
    # the eval split: 32 clips in batches of 2 x 16 = 32, one batch per evaluation
    assert [(e["what"], e["batch"], e["batches"]) for e in batches] == [("full resolution, eval", 1, 1)] * len(evals)


def test_counts_print_as_whole_numbers():
    from c2ftrain.cli import metric_text, skipped_classes_line

    assert skipped_classes_line({"c2f": {"metrics": {"mAP": 0.4, "classes_skipped": 521.0}}}).startswith(
        "521 classes have no positive clip in the evaluation split")
    assert skipped_classes_line({"c2f": {"metrics": {"accuracy": 0.4}}}) == ""
    assert skipped_classes_line({"c2f": {"metrics": {"mAP": 0.4, "classes_skipped": 0}}}) == ""

    assert (metric_text("classes_skipped", 522.0), metric_text("averaged/epochs", 3)) == ("522", "3")
    assert (metric_text("mAP", 0.5), metric_text("eval_extra/accuracy", 1)) == ("0.5000", "1.0000")


def test_a_batch_larger_than_the_training_split_is_noted(toy_store, tmp_path, capsys):
    """A batch of 100 on the 64 training clips: every step takes the 64, once an epoch; the run
    says so (once, whatever the runs and seeds it concerns), and so does `plan`."""
    from c2ftrain.cli import _printer
    from c2ftrain.plan import plan_experiment

    data = {**toy_recipe(toy_store).to_dict()["data"], "batch_size": 100}
    recipe = recipe_from_dict({**toy_recipe(toy_store).to_dict(), "data": data,
                               "optim": {**toy_recipe(toy_store).to_dict()["optim"], "warmup_steps": 1},
                               "phases": [{"method": "pool-avg", "factor": 4, "epochs": 2},
                                          {"method": "none", "factor": 1, "epochs": 1, "batch_size": 16}]})
    events = []
    outcome = PhaseTrainer(recipe, recipe.phases, tmp_path / "run", "c2f", device="cpu", on_event=events.append).run()
    notes = [e["text"] for e in events if e["event"] == "note"]
    assert len(notes) == 1 and notes[0].startswith("phase 1 (pool-avg C=4): batch 100 is more than the 64 clips")
    assert sum(r.steps for r in outcome.records) == 2 + 64 // 16  # one step an epoch in phase 1
    assert plan_experiment(recipe, measure=False)["runs"]["c2f"]["notes"] == notes
    printer = _printer({})
    for _ in range(2):
        printer({"event": "note", "run": "c2f", "text": notes[0]})
    printer.stop()
    assert " ".join(capsys.readouterr().out.split()).count("note: c2f: phase 1 (pool-avg C=4): batch 100") == 1
    ok = recipe_from_dict({**recipe.to_dict(), "data": {**data, "batch_size": 64}})
    assert plan_experiment(ok, measure=False)["runs"]["c2f"]["notes"] == []  # 64 of 64: nothing to say


def test_a_recipe_shrunk_past_its_warm_up_average_window_or_baseline_is_noted(toy_store, tmp_path):
    """Settings a recipe for a longer run keeps when its phases are shrunk: a warm-up as long as
    a phase (its peak never reached), a weight-average window past the last epoch, a [baseline]
    of another length than the phases (the comparison would be of unequal runs)."""
    from c2ftrain.experiment import comparison_notes
    from c2ftrain.plan import plan_experiment

    d = toy_recipe(toy_store).to_dict()  # 3 phases of 4 steps (64 clips, batch 16: one epoch each)
    d["optim"]["warmup_steps"] = 4  # as long as a phase: its peak on its last step, nothing to say
    d["eval"]["average_epochs"] = [2, 9]
    notes = plan_experiment(recipe_from_dict(d), measure=False)["runs"]["c2f"]["notes"]
    assert notes == ["eval.average_epochs [2, 9] ends after the run's last epoch (3): epochs 2-3 are averaged"]
    d["optim"]["warmup_steps"] = 5
    d["phases"][1]["warmup_steps"] = 0  # a phase's own warm-up is the one it uses
    d["phases"][2]["warmup_steps"] = 9
    notes = plan_experiment(recipe_from_dict(d), measure=False)["runs"]["c2f"]["notes"]
    assert notes[:2] == [("phase 1 (pool-avg C=4): optim.warmup_steps 5 is more than its 4 steps: its learning rate "
                          "never reaches its peak"),
                         ("phase 3 (full): phases.3.warmup_steps 9 is more than its 4 steps: its learning rate never "
                          "reaches its peak")]
    d["optim"].update(warmup_steps=13, lr_scope="run")
    d["phases"][1].pop("warmup_steps")
    d["phases"][2].pop("warmup_steps")
    d["eval"]["average_epochs"] = [5, 9]
    notes = plan_experiment(recipe_from_dict(d), measure=False)["runs"]["c2f"]["notes"]
    assert notes == ["optim.warmup_steps 13 is more than the run's 12 steps: the learning rate never reaches optim.lr",
                     "eval.average_epochs [5, 9] starts after the run's last epoch (3): no weight average will be made"]
    d["phases"] = [{"method": "pool-avg", "factor": 4, "epochs": 2}, {"method": "none", "factor": 1, "epochs": 1}]
    d["baseline"]["phases"] = [{"method": "none", "factor": 1, "epochs": 8}]
    assert comparison_notes(recipe_from_dict(d)) == [
        ("the baseline trains 8 epochs, coarse-to-fine 3: the comparison is of runs of different lengths; set "
         "baseline.phases too (e.g. --set 'baseline.phases=[{method=\"none\",factor=1,epochs=3}]')")]
    d["baseline"]["phases"] = [{"method": "none", "factor": 1, "epochs": 3}]
    assert comparison_notes(recipe_from_dict(d)) == []


def test_a_killed_runs_forked_children_do_not_hold_its_directory(tmp_path):
    """DataLoader workers are forked from the trainer: the directory's lock must not live on in
    them after the trainer is SIGKILLed (an flock would, until the last child exits)."""
    import time

    from c2ftrain.run_lock import hold_run_dir

    ready = tmp_path / "ready"
    script = textwrap.dedent(f"""
        import os, signal, time
        from c2ftrain.run_lock import hold_run_dir
        with hold_run_dir({str(tmp_path / "run")!r}, "c2ftrain run"):
            if os.fork() == 0:  # a worker: outlives its parent by a while
                time.sleep(30)
                os._exit(0)
            open({str(ready)!r}, "w").close()
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(ValueError, match=f"in use by another process \\(c2ftrain run, pid {proc.pid} on "), \
                hold_run_dir(tmp_path / "run"):
            pass
        proc.kill()
        proc.wait()
        with hold_run_dir(tmp_path / "run"):  # at once, though the child still sleeps
            pass
    finally:
        proc.kill()
        subprocess.run(["pkill", "-f", str(ready)], check=False)  # the orphaned child


def test_the_weight_averages_metric_is_printed(toy_store, tmp_path):
    from click.testing import CliRunner

    from c2ftrain.cli import main

    r = CliRunner().invoke(main, ["run", str(toy_toml(toy_store, tmp_path / "toy.toml")), "--no-baseline", "--device",
                                  "cpu", "--out", str(tmp_path / "run"), "--set", "eval.average_epochs=[1,2]"])
    assert r.exit_code == 0, r.output
    averaged = json.loads((tmp_path / "run" / "c2f" / "outcome.json").read_text())["metrics"]["averaged/accuracy"]
    assert f"c2f, other final evaluations: averaged/accuracy {averaged * 100:.2f}" in " ".join(r.output.split())


def test_a_directory_one_process_holds_is_not_taken_again_by_it(tmp_path):
    """POSIX locks are per process: taken again, the inner release would free the outer hold
    (a sweep cell resolving to the sweep directory). Refused; the outer hold stays, and the
    directory is free once it ends."""
    from c2ftrain.run_lock import RunDirectoryBusy, hold_run_dir

    with hold_run_dir(tmp_path / "d"):
        with pytest.raises(RunDirectoryBusy, match="already in use by this process"), \
                hold_run_dir(tmp_path / "d" / "cells" / ".."):
            pass
        probe = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            from c2ftrain.run_lock import hold_run_dir
            with hold_run_dir({str(tmp_path / "d")!r}):
                pass
        """)], capture_output=True, text=True, check=False)
        assert probe.returncode != 0 and "in use by another process" in probe.stderr  # still held
    with hold_run_dir(tmp_path / "d"):
        pass
