"""Fixture datasets written in the real on-disk formats (metadata samples in tests/data/formats,
copied from the official files), with small synthetic audio."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from c2fdata.pipeline import dali_available

FORMATS = Path(__file__).parent / "data" / "formats"
# DALI is Linux-only and absent from some machines (the GPU machine's image lacks it): its tests
# skip there, and a test run over both backends passes its backend as
# pytest.param("dali", marks=needs_dali), never as a bare "dali"
needs_dali = pytest.mark.skipif(not dali_available(), reason="nvidia-dali does not import here")


def tone(seconds: float, sr: int = 16000, freq: float = 440.0, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A noisy tone: non-trivial spectra, deterministic."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)
    x = x.astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


@pytest.fixture
def audioset_root(tmp_path) -> Path:
    """balanced_train_segments.csv (sample rows) with all but the last two clips on disk, in
    three namings, plus eval_segments.csv (the header sample) with its one clip missing."""
    root = tmp_path / "audioset"
    (root / "audio" / "balanced").mkdir(parents=True)
    shutil.copy(FORMATS / "balanced_train_segments_sample.csv", root / "balanced_train_segments.csv")
    shutil.copy(FORMATS / "eval_segments_header.txt", root / "eval_segments.csv")
    rows = [r for r in csv.reader(open(root / "balanced_train_segments.csv"), skipinitialspace=True)
            if r and not r[0].startswith("#")]
    for i, (ytid, start, end, _) in enumerate(rows[:-2]):
        name = [f"{ytid}_{float(start):.3f}.flac", f"Y{ytid}.wav", f"{ytid}.wav"][i % 3]
        sf.write(root / "audio" / "balanced" / name, tone(2.0, seed=i, freq=200 + 50 * i), 16000)
    return root


@pytest.fixture
def esc50_root(tmp_path) -> Path:
    root = tmp_path / "ESC-50"
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    rows = list(csv.DictReader(open(FORMATS / "esc50_sample.csv")))
    # give the sample rows folds 1..5 so that every fold split is non-empty
    for i, r in enumerate(rows):
        r["fold"] = str(i % 5 + 1)
        sf.write(root / "audio" / r["filename"], tone(1.0, sr=44100, seed=i), 44100)
    with open(root / "meta" / "esc50.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture
def vggsound_root(tmp_path) -> Path:
    root = tmp_path / "vggsound"
    (root / "video_audio").mkdir(parents=True)
    shutil.copy(FORMATS / "vggsound_sample.csv", root / "vggsound.csv")
    rows = list(csv.reader(open(root / "vggsound.csv")))
    for i, (ytid, start, _, _) in enumerate(rows[:-1]):  # the last one is missing
        sf.write(root / "video_audio" / f"{ytid}_{int(start):06d}.wav", tone(1.0, seed=i, channels=2), 16000)
    return root


@pytest.fixture
def voxceleb_root(tmp_path) -> Path:
    root = tmp_path / "voxceleb1"
    lines = []
    for s, spk in enumerate(["id10001", "id10002", "id10003"]):
        for u in range(3):
            rel = f"{spk}/vid{u}/0000{u}.wav"
            lines.append(f"{[1, 1, 3][u]} {rel}")
            (root / "wav" / spk / f"vid{u}").mkdir(parents=True, exist_ok=True)
            sf.write(root / "wav" / rel, tone(0.5 + u, seed=10 * s + u), 16000)
    lines.append("2 id10003/gone/00009.wav")  # listed, not on disk
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def folder_root(tmp_path) -> Path:
    root = tmp_path / "kinetics_sounds"
    for split in ("train", "test"):
        for c, cls in enumerate(["playing_bass", "tapping_guitar", "dog_barking"]):
            d = root / split / cls
            d.mkdir(parents=True)
            for k in range(2):
                sf.write(d / f"clip{k}.{['wav', 'flac'][k]}", tone(1.0, freq=300 * (c + 1), seed=k), 16000)
    return root
