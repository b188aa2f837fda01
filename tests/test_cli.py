"""The c2fdata command line: build -> info --json -> verify, and its errors."""

import json

from click.testing import CliRunner

from c2fdata.cli import main


def test_build_info_verify(folder_root, tmp_path):
    out = tmp_path / "store"
    r = CliRunner().invoke(main, ["build", "--dataset", "folder", "--root", str(folder_root), "--out", str(out),
                                  "--target-frames", "128", "--workers", "2"])
    assert r.exit_code == 0, r.output
    assert "finalised" in r.output
    r = CliRunner().invoke(main, ["info", str(out), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["dataset"] == "folder" and info["n_mels"] == 128 and info["frame_shift_ms"] == 10.0
    assert {s: v["clips"] for s, v in info["splits"].items()} == {"test": 6, "train": 6}
    assert isinstance(info["mean"], float) and info["std"] > 0
    r = CliRunner().invoke(main, ["verify", str(out)])
    assert r.exit_code == 0 and "verified" in r.output
    # corrupt one clip's bytes: verify names it and fails
    shard = out / "train" / "features" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[5000] ^= 0xFF
    shard.write_bytes(bytes(data))
    r = CliRunner().invoke(main, ["verify", str(out)])
    assert r.exit_code == 2 and "checksum" in r.output and "row 0" in r.output


def test_rerun_is_a_no_op(folder_root, tmp_path):
    args = ["build", "--dataset", "folder", "--root", str(folder_root), "--out", str(tmp_path / "s"), "--target-frames", "128"]
    assert CliRunner().invoke(main, args).exit_code == 0
    before = (tmp_path / "s" / "zarr.json").read_bytes()
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "computed 0 clips" in r.output
    assert (tmp_path / "s" / "zarr.json").read_bytes() == before  # not even finalized_at


def test_clear_errors(tmp_path):
    r = CliRunner().invoke(main, ["build", "--dataset", "audioset", "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and "needs --root" in r.output
    r = CliRunner().invoke(main, ["build", "--dataset", "folder", "--root", str(tmp_path), "--shard", "3/2"])
    assert r.exit_code == 2 and "0 <= K < N" in r.output
    r = CliRunner().invoke(main, ["build", "--dataset", "folder", "--root", str(tmp_path), "--shard", "x"])
    assert r.exit_code == 2 and "K/N" in r.output
    r = CliRunner().invoke(main, ["info", str(tmp_path / "absent")])
    assert r.exit_code == 2 and "no store here" in r.output and "--out" in r.output
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "clip.wav").write_bytes(b"")
    r = CliRunner().invoke(main, ["info", str(tmp_path / "audio")])  # a dataset's folder: never built into
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "not a c2f store" in text and f"--root {tmp_path / 'audio'}" in text
    assert f"--out {tmp_path / 'audio'}" not in text
    for option in ("--target-frames", "--block-clips"):  # 0 is refused, not taken for "the default"
        r = CliRunner().invoke(main, ["build", "--dataset", "instruments", "--out", str(tmp_path / "z"), option, "0"])
        assert r.exit_code == 2 and f"Invalid value for '{option}': 0 is not in the range x>=1" in r.output


def test_root_that_does_not_exist_fails_before_any_work(tmp_path):
    root, out = tmp_path / "no-such-esc50", tmp_path / "s"
    r = CliRunner().invoke(main, ["build", "--dataset", "esc50", "--root", str(root), "--out", str(out)])
    text = " ".join(r.output.split())  # rich wraps long lines
    assert r.exit_code == 2, r.output
    assert f"--root {root}: no such folder" in text and "esc50 metadata and audio" in text
    assert "features" not in r.output and "0/?" not in r.output  # no (empty) progress bar
    assert not out.exists()  # and no store started


def test_progress_bar_only_once_work_starts(tmp_path):
    r = CliRunner().invoke(main, ["build", "--dataset", "esc50", "--root", str(tmp_path), "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and "meta/esc50.csv" in " ".join(r.output.split())
    assert "features" not in r.output


def test_info_problems_lists_every_clip_on_stdout(tmp_path, monkeypatch):
    import numpy as np
    import soundfile as sf

    for k in range(3):  # 0.5 s clips: "short" (kept, zero-padded), one row each
        (tmp_path / "d" / "train" / "dog").mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / "d" / "train" / "dog" / f"{k}.wav",
                 (0.1 * np.random.default_rng(k).standard_normal(8000)).astype("float32"), 16000)
    (tmp_path / "d" / "train" / "dog" / "bad.wav").write_bytes(b"RIFF not really")
    assert CliRunner().invoke(main, ["build", "--dataset", "folder", "--root", str(tmp_path / "d"),
                                     "--out", str(tmp_path / "s")]).exit_code == 0
    r = CliRunner().invoke(main, ["info", str(tmp_path / "s"), "--problems"])
    assert r.exit_code == 0
    rows = [line for line in r.stdout.splitlines() if line.count("│") == 6 and line.startswith("│ train")]
    assert [row.split("│")[2].strip() for row in rows] == ["dog/0", "dog/1", "dog/2", "dog/bad"]
    assert [row.split("│")[3].strip() for row in rows] == ["short"] * 3 + ["unreadable"]
    # a long list (AudioSet's missing clips) comes as tab-separated lines, not a table
    monkeypatch.setattr("c2fdata.cli.PROBLEM_TABLE_MAX_ROWS", 2)
    r = CliRunner().invoke(main, ["info", str(tmp_path / "s"), "--problems"])
    lines = r.stdout.splitlines()
    at = lines.index("split\tclip\treason\teffect\tdetail")
    assert [line.split("\t")[1:3] for line in lines[at + 1:at + 5]] == [
        ["dog/0", "short"], ["dog/1", "short"], ["dog/2", "short"], ["dog/bad", "unreadable"]]
