"""`bench store`: feature-store build throughput and random clip reads against the mmap ceiling."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.timing import measure


def write_clips(root: Path, n: int, seconds: float = 10.0, sr: int = 16000) -> Path:
    """n distinct noisy-tone WAV clips in folder-dataset layout (ROOT/train/<class>/x.wav)."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    for i in range(n):
        d = root / "train" / f"c{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        x = 0.3 * np.sin(2 * np.pi * (100 + 7 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(d / f"{i:05d}.wav", x.astype(np.float32), sr, subtype="PCM_16")
    return root


def bench_build(clips: int = 200, workers=(1, 2), seconds: float = 10.0, block_clips: int | None = None) -> dict:
    """Clips/s of a full build of `clips` 10-s WAV clips, per worker count (startup included)."""
    from c2fdata.build import BuildConfig, build_store
    from c2fdata.store import DEFAULT_BLOCK_CLIPS

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = write_clips(Path(tmp) / "audio", clips, seconds)
        for w in workers:
            store = Path(tmp) / f"store{w}"
            marks: list[tuple[float, int]] = []
            t0 = time.perf_counter()
            res = build_store(BuildConfig(dataset="folder", root=root, out=store, workers=w,
                                          block_clips=block_clips or DEFAULT_BLOCK_CLIPS),
                              progress=lambda done, total: marks.append((time.perf_counter(), done)))
            wall = time.perf_counter() - t0
            # steady state: from the first committed block to the last (worker start-up and
            # metadata scan excluded; they are in `seconds`)
            (ta, na), (tb, nb) = marks[1], marks[-1]
            steady = (nb - na) / (tb - ta)
            out[w] = {"clips": res.computed, "seconds": wall, "clips_per_s": steady,
                      "clips_per_s_per_worker": steady / w, "clips_per_s_with_startup": res.computed / wall}
            shutil.rmtree(store)
    return out


def bench_reads(clips: int = 2000, frames: int = 1024, block_clips=(1, 32), reads: int = 2000, repeats: int = 5) -> dict:
    """Random single-clip reads/s through StoreReader (direct shard path and zarr's own path)
    against a memory-mapped raw .npy of the same data, per shard size, in one run."""
    import zarr

    from c2fdata.reader import StoreReader
    from c2fdata.store import create_store_from_arrays
    from c2fdata.vocab import Vocabulary

    rng = np.random.default_rng(0)
    data = (rng.standard_normal((clips, frames, 128)) * 4 - 4).astype(np.float16)
    order = rng.integers(0, clips, reads)
    out: dict = {"clips": clips, "frames": frames}
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "raw.npy"
        np.save(npy, data)
        mm = np.load(npy, mmap_mode="r")

        def read_mmap():
            for i in order:
                np.array(mm[i])  # copy out, as a loader must
            return len(order)

        out["mmap"] = measure(read_mmap, repeats).to_dict()
        for b in block_clips:
            path = Path(tmp) / f"s{b}"
            t0 = time.perf_counter()
            create_store_from_arrays(
                path, dataset="bench", vocabulary=Vocabulary.from_names(["x"]), multi_label=False,
                splits={"train": dict(features=data, frames=np.full(clips, frames), labels=[["x"]] * clips,
                                      ids=[str(i) for i in range(clips)])}, block_clips=b,
            )
            write_s = time.perf_counter() - t0
            reader = StoreReader(path, "train")
            arr = zarr.open_array(str(path / "train" / "features"), mode="r")

            def read_store():
                for i in order:
                    reader.features(i)
                return len(order)

            def read_zarr():
                for i in order[: reads // 4]:
                    arr[int(i)]
                return reads // 4

            files = sum(1 for p in (path / "train" / "features").rglob("*") if p.is_file())
            m, z = measure(read_store, repeats), measure(read_zarr, repeats)
            out[f"block_{b}"] = {"reader": m.to_dict(), "zarr": z.to_dict(), "files": files,
                                 "write_clips_per_s": clips / write_s,
                                 "reader_vs_mmap": m.median / out["mmap"]["median"]}
            shutil.rmtree(path)
    return out
