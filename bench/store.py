"""`bench store`: feature-store build throughput and random clip reads against the mmap ceiling."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.timing import measure


def write_clips(root: Path, n: int, seconds: float = 10.0, sr: int = 16000, split: str = "train",
                classes: int = 4, seed: int = 0) -> Path:
    """n distinct noisy-tone WAV clips in folder-dataset layout (ROOT/<split>/c<k>/x.wav), clip i
    in class i % classes."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    for i in range(n):
        d = root / split / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        x = 0.3 * np.sin(2 * np.pi * (100 + 7 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(d / f"{i:05d}.wav", x.astype(np.float32), sr, subtype="PCM_16")
    return root


def build_stand_in(out: Path, splits: dict[str, int], classes: int, seconds: float = 10.0,
                   workers: int = 1) -> dict:
    """A store of a dataset's shape (clip length, split names, class count) from noisy tones, for
    benchmarks where the dataset itself is out of reach: the same build (WAV -> Kaldi fbank ->
    codec -> shards) and the same reads, but content that compresses unlike real audio. It is a
    single-label folder store, with as many classes as have a clip (min(classes, clips of the
    largest split)): a multi-label recipe (AudioSet's) trains on it as on any store, its head
    that many classes wide, which moves the model's FLOPs by well under 1%."""
    from c2fdata.build import BuildConfig, build_store

    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or choose another --out")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "audio"
        for k, (split, n) in enumerate(splits.items()):
            write_clips(root, n, seconds, split=split, classes=classes, seed=k)
        t0 = time.perf_counter()
        res = build_store(BuildConfig(dataset="folder", root=root, out=out, workers=workers))
    return {"store": str(out), "splits": splits, "classes": classes, "seconds": seconds,
            "built_clips": res.computed, "failed": res.failed, "build_s": time.perf_counter() - t0}


MIN_BUILD_BLOCKS = 3  # blocks a timed build needs: the steady rate then spans two or more


def bench_build(clips: int = 200, workers=(1, 2), seconds: float = 10.0, block_clips: int | None = None) -> dict:
    """Clips/s of a full build of `clips` 10-s WAV clips, per worker count (startup included)."""
    from c2fdata.build import BuildConfig, build_store
    from c2fdata.store import DEFAULT_BLOCK_CLIPS

    block = block_clips or DEFAULT_BLOCK_CLIPS
    if clips < MIN_BUILD_BLOCKS * block:  # the steady rate runs from the first committed block to the last
        raise ValueError(f"--clips {clips}: the build's steady rate is timed from its first committed block of "
                         f"{block} clips to its last, so it needs at least {MIN_BUILD_BLOCKS} blocks: "
                         f"--clips {MIN_BUILD_BLOCKS * block} or more")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = write_clips(Path(tmp) / "audio", clips, seconds)
        for w in workers:
            store = Path(tmp) / f"store{w}"
            marks: list[tuple[float, int]] = []
            t0 = time.perf_counter()
            res = build_store(BuildConfig(dataset="folder", root=root, out=store, workers=w, block_clips=block),
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


# -- codecs: size, build speed, read speed and error, against lilcom/lhotse where installed ------

def reference_features(root: Path, ids: list[str], target_frames: int) -> np.ndarray:
    """float32 (N, T, F) fbank of the folder dataset's clips `ids`, computed here, independently of
    any store: the reference each codec's error is measured against."""
    import soundfile as sf

    from c2fdata.features import FbankConfig, fbank, pad_or_crop

    from c2fdata.threads import one_torch_thread

    with one_torch_thread():  # as build workers compute: fbank's float sums depend on the thread count
        out = []
        for clip_id in ids:
            audio, sr = sf.read(root / "train" / f"{clip_id}.wav", dtype="float32")
            out.append(pad_or_crop(fbank(audio, sr, FbankConfig()), target_frames)[0].numpy())
    return np.stack(out)


def _random_reads(read, n: int, reads: int, repeats: int) -> dict:
    """Random reads/s of one process, with torch on one thread as in a loader's worker process
    (DataLoader and our DALI reader processes both set it; q32's float16 cast runs in torch)."""
    from c2fdata.threads import one_torch_thread

    order = np.random.default_rng(1).integers(0, n, reads)

    def run():
        for i in order:
            read(int(i))
        return len(order)

    with one_torch_thread():
        return measure(run, repeats).to_dict()


def _feature_bytes(store: str) -> int:
    from c2fdata.info import disk_usage
    from c2fdata.storage import as_location

    return disk_usage(as_location(store).child("train", "features"))[0]


def bench_codecs(clips: int = 512, codecs=None, workers: int = 2, reads: int = 2000, repeats: int = 3,
                 out: str | None = None, references: bool = True) -> dict:
    """Per codec: feature bytes per clip (and as a share of float16's), steady build clips/s,
    random reads/s per process through StoreReader, max/mean absolute error against float32
    features computed independently. `out`: a folder or s3:// prefix to build the stores in
    (default: a temporary folder). With `references`, lilcom (lhotse's setting, tick_power=-5),
    lhotse's LilcomChunkyWriter store and per-clip 8-bit quantisation where they import."""
    from c2fdata.build import BuildConfig, build_store
    from c2fdata.codec import CODECS
    from c2fdata.reader import StoreReader

    codecs = list(codecs or CODECS)
    result: dict = {"clips": clips, "workers": workers, "codecs": {}, "references": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = write_clips(Path(tmp) / "audio", clips)
        reference = ids = None
        for name in codecs:
            store = f"{out.rstrip('/')}/{name}" if out else str(Path(tmp) / name)
            marks: list[tuple[float, int]] = []
            build_store(BuildConfig(dataset="folder", root=root, out=store, workers=workers, codec=name),
                        progress=lambda done, total: marks.append((time.perf_counter(), done)))
            # steady state from the first committed block on (one block: from the start)
            (ta, na), (tb, nb) = marks[1 if len(marks) > 2 else 0], marks[-1]
            reader = StoreReader(store, "train")
            if reference is None:
                ids = reader.ids
                reference = reference_features(root, ids, reader.target_frames)
            assert reader.ids == ids
            err_max = err_sum = 0.0
            for i in range(len(reader)):
                e = np.abs(reader.features(i).astype(np.float32) - reference[i])
                err_max, err_sum = max(err_max, float(e.max())), err_sum + float(e.sum())
            size = _feature_bytes(store)
            result["codecs"][name] = {
                "store": store, "bytes_per_clip": size / len(reader), "build_clips_per_s": (nb - na) / (tb - ta),
                "reads": _random_reads(reader.features, len(reader), reads, repeats),
                "max_abs_error": err_max, "mean_abs_error": err_sum / reference.size,
            }
        if references:
            result["references"] = _reference_codecs(reference, Path(tmp), reads, repeats)
    f16 = result["codecs"].get("float16", {}).get("bytes_per_clip") or reference[0].size * 2
    for r in list(result["codecs"].values()) + list(result["references"].values()):
        r["share_of_float16"] = r["bytes_per_clip"] / f16
    return result


def _reference_codecs(x: np.ndarray, tmp: Path, reads: int, repeats: int) -> dict:
    """Candidates measured but not offered as codecs (docs/STORE.md says why)."""
    from numcodecs import Zstd

    out = {}

    def entry(blobs, decode, note):
        err = [np.abs(decode(b) - c) for b, c in zip(blobs, x)]
        return {"bytes_per_clip": sum(map(len, blobs)) / len(blobs), "note": note,
                "reads": _random_reads(lambda i: decode(blobs[i]), len(blobs), reads, repeats),
                "max_abs_error": float(max(e.max() for e in err)), "mean_abs_error": float(sum(e.sum() for e in err) / x.size)}

    zstd = Zstd(level=3)

    def u8_encode(c):
        lo, hi = float(c.min()), float(c.max())
        scale = (hi - lo) / 255 or 1.0
        return np.array([lo, scale], np.float32).tobytes() + zstd.encode(np.rint((c - lo) / scale).astype(np.uint8).tobytes())

    def u8_decode(b):
        lo, scale = np.frombuffer(b[:8], np.float32)
        return np.frombuffer(zstd.decode(b[8:]), np.uint8).reshape(x.shape[1:]).astype(np.float32) * scale + lo

    out["uint8 per clip + zstd"] = entry([u8_encode(c) for c in x], u8_decode, "decode only, no I/O")
    try:
        import lilcom
    except ImportError:
        lilcom = None
    if lilcom is not None:
        out["lilcom"] = entry([lilcom.compress(np.array(c), tick_power=-5) for c in x], lilcom.decompress,
                              "decode only, no I/O")
    try:
        from lhotse import LilcomChunkyWriter
        from lhotse.features.io import LilcomChunkyReader
    except ImportError:
        return out
    path = tmp / "lhotse.lca"
    t0 = time.perf_counter()
    with LilcomChunkyWriter(str(path)) as w:
        keys = [w.write(str(i), np.array(c)) for i, c in enumerate(x)]
    write_s = time.perf_counter() - t0
    reader = LilcomChunkyReader(str(path))
    err = [np.abs(reader.read(k) - c) for k, c in zip(keys, x)]
    out["lhotse LilcomChunkyWriter"] = {
        "bytes_per_clip": path.stat().st_size / len(x), "note": "its own reader, from its file",
        "write_clips_per_s": len(x) / write_s,
        "reads": _random_reads(lambda i: reader.read(keys[i]), len(x), reads, repeats),
        "max_abs_error": float(max(e.max() for e in err)), "mean_abs_error": float(sum(e.sum() for e in err) / x.size)}
    return out


# -- many readers at once -------------------------------------------------------------------------

def _reader_process(store: str, reads: int, seed: int, barrier, results) -> None:
    import torch

    from c2fdata.reader import StoreReader

    torch.set_num_threads(1)  # as a loader's worker process (see _random_reads)
    reader = StoreReader(store, "train")
    order = np.random.default_rng(seed).integers(0, len(reader), reads)
    for i in order:  # warm-up, one untimed pass as measure() does: with only the first 50 reads
        reader.features(int(i))  # (shards opened, first requests) a fresh process read ~25% slower
    barrier.wait()
    t0 = time.perf_counter()
    for i in order:
        reader.features(int(i))
    results.put(reads / (time.perf_counter() - t0))


def bench_concurrent_reads(store: str, processes=(1, 2, 4), reads: int = 2000, repeats: int = 3) -> dict:
    """Random reads/s per process with P reader processes on one store at once (each its own
    random order), median over repeats of the per-process mean; and their sum."""
    import multiprocessing as mp
    import statistics

    ctx = mp.get_context("spawn")  # fresh processes, as DataLoader/DALI workers on another rank
    out = {}
    for p in processes:
        per_process, total = [], []
        for rep in range(repeats):
            barrier, results = ctx.Barrier(p), ctx.Queue()
            procs = [ctx.Process(target=_reader_process, args=(store, reads, 1000 * rep + k, barrier, results))
                     for k in range(p)]
            for proc in procs:
                proc.start()
            rates = [results.get(timeout=600) for _ in procs]
            for proc in procs:
                proc.join()
            per_process.append(statistics.mean(rates))
            total.append(sum(rates))
        out[p] = {"per_process": statistics.median(per_process), "total": statistics.median(total),
                  "spread": (max(per_process) - min(per_process)) / 2 / statistics.median(per_process)}
    return out
