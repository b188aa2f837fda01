"""Loaders: DALI graph pieces == torch reference, backends == each other, exact epochs, shards."""

import numpy as np
import pytest
import torch
import zarr
from conftest import needs_dali

from c2fdata.compress import compress as reference_compress
from c2fdata.features import FbankConfig
from c2fdata.pipeline import PipelineConfig, dali_available, make_loader, resolve_backend
from c2fdata.pipeline.sampling import Batch, EpochPlan, SampleParams, balanced_weights
from c2fdata.pipeline.torch_loader import crop_or_pad, mask, normalize, transform
from c2fdata.reader import StoreFormatError, StoreReader
from c2fdata.store import create_store_from_arrays
from c2fdata.vocab import Vocabulary



def needs_cuda(test):
    """A GPU test: selected by `pytest -m gpu` (scripts/gpu-check.sh), skipped without CUDA."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")(test))


N_CLIPS, STORE_FRAMES, N_MELS = 37, 50, 16
MEAN, STD = -4.2677393, 4.5689974
FACTORS = [1, 2, 3, 4]
PHASES = [("none", 1)] + [(m, c) for m in ("fshift", "pool-avg", "pool-max") for c in FACTORS]


# -- stores ---------------------------------------------------------------------------------------
def make_store(path, n, multi_label, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(-4, 3, (n, STORE_FRAMES, N_MELS)).astype(np.float16)
    frames = rng.integers(20, STORE_FRAMES + 1, n)
    frames[:3] = STORE_FRAMES  # some clips fill the store's length
    for i in range(n):
        feats[i, frames[i] :] = 0
    names = ["dog", "cat", "bird", "rain"]
    if multi_label:
        labels = [list(rng.choice(names, size=rng.integers(1, 3), replace=False)) for _ in range(n)]
    else:
        labels = [[names[rng.integers(3)]] for _ in range(n)]
    create_store_from_arrays(
        path, dataset="toy", vocabulary=Vocabulary.from_names(names), multi_label=multi_label,
        splits={"train": dict(features=feats, frames=frames, labels=labels, ids=[f"clip{i}" for i in range(n)])},
        fbank=FbankConfig(n_mels=N_MELS), block_clips=8,
    )
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("stores") / "single", N_CLIPS, multi_label=False)


@pytest.fixture(scope="module")
def multi_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("stores") / "multi", 23, multi_label=True, seed=1)


@pytest.fixture(scope="module")
def reader(store):
    return StoreReader(store, "train")


def collect(loader, epochs=1):
    return [[{k: v.cpu() for k, v in b.items()} for b in loader] for _ in range(epochs)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for epoch_a, epoch_b in zip(a, b):
        assert len(epoch_a) == len(epoch_b)
        for x, y in zip(epoch_a, epoch_b):
            assert x.keys() == y.keys()
            for key in x:
                assert x[key].dtype == y[key].dtype, key
                assert torch.equal(x[key], y[key]), (key, (x[key].float() - y[key].float()).abs().max())


# -- DALI graph pieces against the torch reference ------------------------------------------------
def run_graph(graph, *batches, gpu=False):
    """Run `graph(*nodes)` once with DALI over batches (lists of numpy samples); per output, a
    list of numpy samples. Non-parallel source: builds in milliseconds."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=len(batches[0]), num_threads=1, device_id=0 if gpu else None)
    def pipe():
        nodes = [fn.external_source(source=constant(b), batch=True) for b in batches]
        if gpu:
            nodes[0] = nodes[0].gpu()
        out = graph(*nodes)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    p = pipe()
    p.build()
    outputs = p.run()
    return [[np.array(t) for t in (o.as_cpu() if gpu else o)] for o in outputs]


def constant(batch):
    return lambda: batch


def clips(frames, n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(-4, 4, (frames, N_MELS)).astype(np.float16) for _ in range(n)]


def ints(values):
    return [np.array([v], np.int32) for v in values]


@needs_dali
@pytest.mark.parametrize("method, factor", PHASES)
@pytest.mark.parametrize("frames", [12, 13])  # 12: every C divides it; 13: none of 2, 3, 4 does
def test_dali_compress_equals_reference(method, factor, frames):
    from c2fdata.pipeline import dali
    from nvidia.dali import fn, types

    x = clips(frames)
    offsets = [i % factor for i in range(len(x))]
    to_float = lambda n: fn.cast(n, dtype=types.FLOAT)  # noqa: E731
    outputs = run_graph(
        lambda n, off: (
            dali.compress(to_float(n), method, factor, frames),
            dali.compress(to_float(n), method, factor, frames, off if method == "fshift" else None),
            dali.compress(n, method, factor, frames) if method in ("none", "fshift") else to_float(n),
        ),
        x, ints(offsets),
    )
    for i, clip in enumerate(x):
        ref = reference_compress(torch.from_numpy(clip).float(), method, factor)
        assert torch.equal(torch.from_numpy(outputs[0][i]), ref)
        off = offsets[i] if method == "fshift" else 0
        assert torch.equal(torch.from_numpy(outputs[1][i]), reference_compress(torch.from_numpy(clip).float(), method, factor, off))
        if method in ("none", "fshift"):  # selection works on the stored float16 too
            assert torch.equal(torch.from_numpy(outputs[2][i]), reference_compress(torch.from_numpy(clip), method, factor))


@needs_dali
@pytest.mark.parametrize("target", [8, 12, 16])  # crop, exact, pad
def test_dali_crop_equals_reference(target):
    from c2fdata.pipeline import dali

    x = clips(12)
    starts = [0, 1, 4, 7, 11, 12]  # up to and past the end: zeros
    (out,) = run_graph(lambda n, s: dali.crop(n, s, target), x, ints(starts))
    for i, clip in enumerate(x):
        ref = crop_or_pad(torch.from_numpy(clip), starts[i], target)
        assert out[i].dtype == np.float16
        assert torch.equal(torch.from_numpy(out[i]), ref)


@needs_dali
def test_dali_normalize_equals_reference():
    from c2fdata.pipeline import dali

    x = clips(13)
    x32 = [c.astype(np.float32) for c in x]
    out16, out32, plain = run_graph(
        lambda a, b: (dali.normalize(a, MEAN, STD), dali.normalize(b, MEAN, STD), dali.normalize(a, None, None)), x, x32
    )
    for i, clip in enumerate(x):
        ref = normalize(torch.from_numpy(clip).float(), MEAN, STD)
        assert torch.equal(torch.from_numpy(out16[i]), ref)
        assert torch.equal(torch.from_numpy(out32[i]), ref)
        assert torch.equal(torch.from_numpy(plain[i]), torch.from_numpy(clip).float())
        # AST divides: the reciprocal differs from that by at most an ulp
        torch.testing.assert_close(ref, (torch.from_numpy(clip).float() - MEAN) / (2 * STD), rtol=2e-7, atol=2e-7)


@needs_dali
def test_dali_mask_equals_reference():
    from c2fdata.pipeline import dali

    frames = 13
    x = [c.astype(np.float32) for c in clips(frames)]
    # (time start, time width, freq start, freq width): none, both, full time, full freq, edges
    params = [(0, 0, 0, 0), (3, 4, 2, 5), (0, frames, 0, 0), (0, 0, 0, N_MELS), (frames - 1, 1, N_MELS - 1, 1), (5, 0, 7, 3)]
    anchors = [np.array([t0, 0, 0, f0], np.float32) for t0, _, f0, _ in params]
    shapes = [np.array([tw, N_MELS, frames, fw], np.float32) for _, tw, _, fw in params]
    (out,) = run_graph(dali.mask, x, anchors, shapes)
    for i, clip in enumerate(x):
        assert torch.equal(torch.from_numpy(out[i]), mask(torch.from_numpy(clip), *params[i]))


@needs_dali
@pytest.mark.parametrize("method, factor", PHASES)
def test_dali_transform_equals_reference(method, factor):
    """The DALI graph reorders ops where that is exact (see dali.transform); the result must
    still be the reference's crop -> compress -> normalise, bit for bit."""
    from c2fdata.pipeline import dali

    x = clips(14)
    n = len(x)
    cfg = PipelineConfig("unused", method=method, factor=factor, target_frames=11, random_offset=True)
    starts = [0, 1, 2, 3, 5, 9]
    offsets = [i % factor for i in range(n)] if method == "fshift" else [0] * n
    (out,) = run_graph(lambda a, s, o: dali.transform(a, cfg, MEAN, STD, s, o if method == "fshift" else None), x, ints(starts), ints(offsets))
    zeros = np.zeros(n, np.int64)
    params = SampleParams(np.array(starts), np.array(offsets), zeros, zeros, zeros, zeros)
    ref = transform(Batch(x, [np.int64(0)] * n, np.arange(n), params), cfg, MEAN, STD)["features"]
    assert torch.equal(torch.from_numpy(np.stack(out)), ref)


@needs_dali
@needs_cuda
@pytest.mark.parametrize("method, factor", PHASES)
def test_dali_transform_on_gpu_equals_reference(method, factor):
    from c2fdata.pipeline import dali

    x = clips(14)
    cfg = PipelineConfig("unused", method=method, factor=factor, target_frames=11)
    (out,) = run_graph(lambda a, s: dali.transform(a, cfg, MEAN, STD, s), x, ints([2] * len(x)), gpu=True)
    zeros = np.zeros(len(x), np.int64)
    params = SampleParams(np.full(len(x), 2), zeros, zeros, zeros, zeros, zeros)
    ref = transform(Batch(x, [np.int64(0)] * len(x), np.arange(len(x)), params), cfg, MEAN, STD)["features"]
    torch.testing.assert_close(torch.from_numpy(np.stack(out)), ref, rtol=1e-6, atol=1e-6)


def graph_ops(node) -> list:
    """Every DALI operator instance `node` depends on (inputs and argument inputs)."""
    seen, todo = {}, [node]
    while todo:
        op = todo.pop().source
        if id(op) not in seen:
            seen[id(op)] = op
            todo.extend(op.inputs)
    return list(seen.values())


@needs_dali
@pytest.mark.parametrize("method, factor", PHASES)
def test_gpu_graph_takes_every_slice_argument_from_the_host(method, factor):
    """A constant positional input of a GPU op (fn.slice's shape, say) becomes a GPU constant,
    which DALI copies back to the host every batch: a sync per batch. In the GPU graph the only
    GPU data is what descends from the stored features' `.gpu()`; no GPU node without inputs.
    Traced, not built: runs without a GPU."""
    from nvidia.dali import fn
    from nvidia.dali.pipeline import Pipeline

    from c2fdata.pipeline import dali

    cfg = PipelineConfig("unused", method=method, factor=factor, target_frames=11, random_offset=True,
                         time_mask_frames=4, freq_mask_bins=3)
    with Pipeline(batch_size=2, num_threads=1, device_id=None):
        stored, start, offset, anchor, shape = fn.external_source(source=lambda: None, num_outputs=5, batch=True)
        x = dali.transform(stored.gpu(), cfg, MEAN, STD, start, offset if method == "fshift" else None)
        ops = graph_ops(dali.mask(x, anchor, shape))
    assert x.device == "gpu"
    assert [op.name for op in ops if not op.inputs and any(o.device == "gpu" for o in op.outputs)] == []


# -- the loaders ----------------------------------------------------------------------------------
def config(store, **kw):
    base = dict(batch_size=8, num_workers=0, num_threads=1, seed=7)
    return PipelineConfig(store, "train", **{**base, **kw})


TRAINING = dict(shuffle=True, random_crop=True, random_offset=True, freq_mask_bins=6, time_mask_frames=12)


@needs_dali
@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augmented"])
@pytest.mark.parametrize("method, factor, target", [("none", 1, None), ("fshift", 3, 40), ("pool-avg", 2, None), ("pool-max", 4, 40), ("pool-avg", 3, 31)])
def test_backends_serve_identical_batches(store, reader, augment, method, factor, target):
    cfg = config(store, method=method, factor=factor, target_frames=target, **(TRAINING if augment else {"shuffle": True}))
    torch_batches = collect(make_loader(cfg.replace(backend="torch"), reader), epochs=2)
    with make_loader(cfg.replace(backend="dali"), reader) as dali_loader:
        dali_batches = collect(dali_loader, epochs=2)
    assert_same_batches(torch_batches, dali_batches)
    assert torch_batches[0][0]["features"].shape == (8, (target or STORE_FRAMES) // factor, N_MELS)
    order = [torch.cat([b["index"] for b in epoch]) for epoch in torch_batches]
    assert not torch.equal(order[0], order[1])  # epochs advance by themselves


@pytest.mark.parametrize("backend", [pytest.param("dali", marks=needs_dali), "torch"])
def test_worker_processes_serve_the_same_batches(store, reader, backend):
    cfg = config(store, method="fshift", factor=2, backend=backend, **TRAINING)
    with make_loader(cfg, reader) as inline, make_loader(cfg.replace(num_workers=2), reader) as workers:
        assert_same_batches(collect(inline, 2), collect(workers, 2))


@needs_dali
def test_spawned_dali_workers_serve_the_same_batches(store, reader, monkeypatch):
    # GPU pipelines (and any process where CUDA is up) spawn their readers: the source pickles.
    from c2fdata.pipeline import dali

    monkeypatch.setattr(dali, "_start_method", lambda gpu: "spawn")
    cfg = config(store, method="pool-max", factor=3, num_workers=1, **TRAINING)
    with make_loader(cfg.replace(backend="dali"), reader) as spawned:
        assert_same_batches(collect(spawned), collect(make_loader(cfg.replace(backend="torch"), reader)))


@needs_dali
@pytest.mark.parametrize("mixup", [False, True], ids=["stored", "mixup"])
def test_dali_source_hands_each_batch_over_as_one_array_per_output(store, reader, mixup):
    """The reader process returns the batch's features and labels as one array each (what DALI
    carries over as one buffer), equal sample by sample to what the batch source read; a batch
    whose samples differ in shape stays a list."""
    from types import SimpleNamespace

    from c2fdata.pipeline.dali_source import DaliSource, PassState, dense

    loader = make_loader(config(store, backend="torch", method="fshift", factor=2, **TRAINING,
                                **({"mixup": 0.5} if mixup else {})), reader)  # its phase, resolved
    cfg = loader.cfg
    passes = PassState()
    try:
        source = DaliSource(reader, loader.plan, cfg, passes)
        passes.set(1, 0)
        out = dict(zip(source.outputs, source(SimpleNamespace(iteration=1))))
        read = source.read(1, 1)  # the same batch, per sample
    finally:
        passes.close()
    for name, samples in (("stored", read.features), ("labels", read.labels)):
        assert isinstance(out[name], np.ndarray) and len(out[name]) == len(samples) == cfg.batch_size
        for got, want in zip(out[name], samples):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    ragged = [np.zeros((3, 2), np.float16), np.zeros((4, 2), np.float16)]
    assert dense(ragged) is ragged
    assert isinstance(dense([np.zeros(3, np.float32), np.zeros(3, np.float16)]), list)  # mixed dtypes


@needs_dali
def test_a_spawned_reader_process_does_not_import_torch(store, reader, tmp_path):
    """Unpickling the source, which is all a spawned DALI reader process does before reading,
    imports neither torch nor DALI's torch plugin: ~2 s less per process and pipeline build
    (float16 stores; a q32 store imports torch when a reader first decodes)."""
    import pickle
    import subprocess
    import sys

    from c2fdata.pipeline.dali_source import DaliSource, PassState
    from c2fdata.pipeline.sampling import EpochPlan

    cfg = config(store, method="fshift", factor=2, **TRAINING)
    passes = PassState()
    try:
        source = DaliSource(reader, EpochPlan(len(reader), cfg.batch_size, seed=cfg.seed, shuffle=True), cfg, passes)
        (tmp_path / "source.pkl").write_bytes(pickle.dumps(source))
        # (a plain child, unlike DALI's, has a resource tracker of its own, which would remove the
        # shared segment at exit: it is told not to track what it only attaches to)
        code = ("import pickle, sys; from multiprocessing import resource_tracker as rt; "
                "rt.register = lambda *a: None; s = pickle.loads(open(sys.argv[1], 'rb').read()); "
                "print(type(s).__name__, sorted(m for m in ('torch', 'nvidia.dali.plugin.pytorch') if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "source.pkl")], capture_output=True,
                             text=True, timeout=120, check=True).stdout.split()
    finally:
        passes.close()
    assert out == ["DaliSource", "[]"]


@needs_dali
def test_backends_agree_on_multi_label_stores(multi_store):
    reader = StoreReader(multi_store, "train")
    cfg = config(multi_store, method="fshift", factor=2, batch_size=5, **TRAINING)
    with make_loader(cfg.replace(backend="dali"), reader) as loader:
        batches = collect(loader)
    assert_same_batches(batches, collect(make_loader(cfg.replace(backend="torch"), reader)))
    labels = torch.cat([b["labels"] for b in batches[0]])
    index = torch.cat([b["index"] for b in batches[0]])
    assert labels.dtype == torch.float32 and torch.equal(labels, torch.from_numpy(reader.labels()[index.numpy()]))


@pytest.mark.parametrize("backend", [pytest.param("dali", marks=needs_dali), "torch"])
def test_one_epoch_visits_every_clip_once_and_keeps_the_last_batch(store, reader, backend):
    with make_loader(config(store, backend=backend, shuffle=True, method="pool-avg", factor=2), reader) as loader:
        batches = collect(loader)[0]
    assert [len(b["index"]) for b in batches] == [8, 8, 8, 8, 5] and len(loader) == 5
    index = torch.cat([b["index"] for b in batches])
    assert sorted(index.tolist()) == list(range(N_CLIPS)) and index.tolist() != list(range(N_CLIPS))
    labels = torch.cat([b["labels"] for b in batches])
    assert labels.dtype == torch.int64 and torch.equal(labels, torch.from_numpy(reader.labels()[index.numpy()]))
    for b in batches:
        assert b["features"].dtype == torch.float32 and b["features"].shape[1:] == (STORE_FRAMES // 2, N_MELS)


@pytest.mark.parametrize("backend", [pytest.param("dali", marks=needs_dali), "torch"])
def test_shards_partition_the_epoch(store, reader, backend):
    world = 3
    seen = []
    for rank in range(world):
        cfg = config(store, backend=backend, shuffle=True, rank=rank, world_size=world)
        with make_loader(cfg, reader) as loader:
            seen.append(torch.cat([b["index"] for b in collect(loader)[0]]).tolist())
    assert sorted(sum(seen, [])) == list(range(N_CLIPS))  # every clip exactly once overall
    assert [len(s) for s in seen] == [13, 12, 12]


@pytest.mark.parametrize("clips, world, batch", [(37, 1, 8), (37, 4, 5), (10, 3, 4), (64, 8, 8), (5, 7, 2)])
def test_epoch_plan_shards_are_exact(clips, world, batch):
    for epoch in range(2):
        plans = [EpochPlan(clips, batch, shuffle=True, seed=3, rank=r, world_size=world) for r in range(world)]
        served = [np.concatenate([p.batch(epoch, k)[1] for k in range(len(p))] or [np.array([], int)]) for p in plans]
        assert sorted(np.concatenate(served).tolist()) == list(range(clips))
        assert [len(s) for s in served] == [p.shard_size for p in plans]
        # drop_last: the same number of full batches on every rank, no clip twice
        dropped = [EpochPlan(clips, batch, shuffle=True, seed=3, rank=r, world_size=world, drop_last=True) for r in range(world)]
        assert len({len(p) for p in dropped}) == 1
        kept = np.concatenate([p.batch(epoch, k)[1] for p in dropped for k in range(len(p))] or [np.array([], int)])
        assert len(set(kept.tolist())) == len(kept) == len(dropped[0]) * batch * world


def test_epoch_order_depends_on_seed_and_epoch_only():
    plan = EpochPlan(50, 8, shuffle=True, seed=1)
    assert np.array_equal(plan.order(3), EpochPlan(50, 4, shuffle=True, seed=1).order(3))
    assert not np.array_equal(plan.order(3), plan.order(4))
    assert not np.array_equal(plan.order(3), EpochPlan(50, 8, shuffle=True, seed=2).order(3))
    assert np.array_equal(EpochPlan(50, 8).order(5), np.arange(50))


def test_balanced_weights_follow_ast():
    multi_hot = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1]], np.float32)
    counts = multi_hot.sum(0)
    expected = [sum(1000 / (counts[k] + 0.01) for k in np.flatnonzero(row)) for row in multi_hot]
    np.testing.assert_allclose(balanced_weights(multi_hot), expected)
    single = np.array([0, 0, 2, 1, 0])
    rare, common = 1000 / 1.01, 1000 / 3.01
    np.testing.assert_allclose(balanced_weights(single, 4), [common, common, rare, rare, common])


def test_balanced_sampling_draws_rare_labels_more(multi_store):
    reader = StoreReader(multi_store, "train")
    cfg = config(multi_store, backend="torch", balanced=True, num_samples=2000, batch_size=250)
    loader = make_loader(cfg, reader)
    index = torch.cat([b["index"] for b in loader]).numpy()
    assert len(index) == 2000 and len(loader) == 8
    weights = balanced_weights(reader.labels())
    drawn = np.bincount(index, minlength=len(reader)) / len(index)
    np.testing.assert_allclose(drawn, weights / weights.sum(), atol=0.025)
    batch = next(iter(loader))
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (250, reader.n_classes)


def test_augmentation_is_seeded_and_masks_scale_with_c(store, reader):
    cfg = config(store, backend="torch", method="fshift", factor=4, normalize=False, **{**TRAINING, "time_mask_frames": 40})
    first = collect(make_loader(cfg, reader))[0]
    assert_same_batches([first], collect(make_loader(cfg, reader)))  # same seed, same batches
    other = collect(make_loader(cfg.replace(seed=8), reader))[0]
    assert not torch.equal(first[0]["features"], other[0]["features"])
    loader = make_loader(cfg, reader)
    source = loader.source()
    widths = np.concatenate([source.read(0, k).params.time_width for k in range(len(loader))])
    assert widths.max() <= 40 // 4 and widths.max() > 0  # the time mask scales with 1/C
    crops = np.concatenate([source.read(0, k).params.crop_start for k in range(len(loader))])
    assert crops.max() == 0  # no clip is longer than the target (the store's length)
    short = source.read(0, 0)
    starts = source.read(0, 0, cfg.replace(target_frames=30)).params.crop_start
    frames = reader.frames()[short.index]
    assert (starts <= np.maximum(frames - 30, 0)).all() and starts.max() > 0


def test_set_phase_and_epoch_reuse_the_store(store, reader, monkeypatch):
    loader = make_loader(config(store, backend="torch"), reader)
    first = collect(loader)[0]
    dataloader = loader._dataloader()
    opened = []
    import c2fdata.reader as reader_module

    monkeypatch.setattr(reader_module, "open_store", lambda *a, **k: opened.append(a))
    monkeypatch.setattr(StoreReader, "labels", lambda self: pytest.fail("re-scanned the labels"))
    loader.set_phase("pool-max", 4)
    coarse = collect(loader)[0]
    assert coarse[0]["features"].shape == (8, STORE_FRAMES // 4, N_MELS)
    loader.set_phase("none", 1)
    loader.set_epoch(0)
    assert_same_batches([first], collect(loader))
    assert opened == [] and loader.epoch == 1
    assert loader._dataloader() is dataloader  # (persistent) workers serve every phase


def test_requests_of_two_phases_interleave(store, reader):
    """Prefetched requests of two phases may reach one worker in any order: each is served at
    its own phase, and serving it leaves the shared source as it was."""
    from c2fdata.pipeline.torch_loader import _Batches

    cfg = config(store, backend="torch", **TRAINING)
    loader = make_loader(cfg, reader)
    source = loader.source()
    batches = _Batches(source, loader.mean, loader.std)
    phases = [loader.cfg, loader.cfg.with_phase("pool-avg", 4), loader.cfg.with_phase("fshift", 3)]
    served = {}
    for k in range(2):
        for phase in phases:  # a, b, c, a, b, c: every request after one of another phase
            served[phase.method, phase.factor, k] = batches[(phase, 0, k)]
            assert source.cfg is loader.cfg
    for phase in phases:
        alone = make_loader(cfg.with_phase(phase.method, phase.factor), reader)
        expected = list(alone.epoch_batches(0))
        for k in range(2):
            got = served[phase.method, phase.factor, k]
            assert got["features"].shape == (8, STORE_FRAMES // phase.factor, N_MELS)
            assert_same_batches([[got]], [[expected[k]]])


def test_batch_source_reads_any_phase_without_changing(store, reader):
    loader = make_loader(config(store, backend="torch", **TRAINING), reader)
    source = loader.source()
    coarse = loader.cfg.with_phase("fshift", 4)
    read = source.read(1, 0, coarse)
    assert source.cfg is loader.cfg
    own = type(source)(reader, loader.plan, coarse).read(1, 0)
    for field in ("offset", "time_start", "time_width"):
        np.testing.assert_array_equal(getattr(read.params, field), getattr(own.params, field))
    assert read.params.offset.max() > 0  # the phase's own draws: Frame-Shift offsets in [0, 4)
    assert source.read(1, 0).params.offset.max() == 0  # the source's phase: no offset at C = 1


def test_backends_import_the_base_loader_not_the_package():
    """pipeline/__init__ imports the backends; a backend importing the package back would be a
    cycle. They share `Loader` through pipeline/loader.py."""
    import ast
    from pathlib import Path

    import c2fdata.pipeline as package
    from c2fdata.pipeline import loader as base

    assert package.Loader is base.Loader
    folder = Path(package.__file__).parent
    for name in ("torch_loader.py", "dali.py", "loader.py", "sampling.py", "config.py"):
        tree = ast.parse((folder / name).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "c2fdata.pipeline" not in imported, name


@needs_dali
def test_dali_phase_and_epoch_changes(store, reader):
    cfg = config(store, backend="dali", shuffle=True, num_workers=1)
    with make_loader(cfg, reader) as loader, make_loader(cfg.replace(backend="torch"), reader) as ref:
        for method, factor, epoch in [("fshift", 2, 0), ("fshift", 2, None), ("pool-avg", 4, 5), ("none", 1, 2)]:
            for each in (loader, ref):
                each.set_phase(method, factor)
                if epoch is not None:
                    each.set_epoch(epoch)
            assert_same_batches(collect(loader), collect(ref))
        assert loader.epoch == ref.epoch == 3
        # an interrupted pass does not advance the epoch, and the next pass starts afresh
        next(iter(loader))
        next(iter(ref))
        assert loader.epoch == ref.epoch == 3
        assert_same_batches(collect(loader), collect(ref))
        assert loader.epoch == 4


@needs_dali
def test_dali_builds_each_phase_once_and_serves_any_epoch(store, reader):
    """What training with evaluations asks of a loader: epochs 0, 1, 0 again, from a later batch,
    and two phases alternating. Each phase's pipeline is built once (a new pass resets its
    iterator) and serves exactly the torch backend's batches; a third phase closes the least
    recently used pipeline; an interrupted pass is not continued."""
    from c2fdata.pipeline.dali import MAX_LIVE_PIPELINES

    cfg = config(store, backend="dali", num_workers=2, **TRAINING)
    schedule = [("none", 1, 0, 0), ("none", 1, 1, 0), ("fshift", 3, 0, 0), ("none", 1, 0, 0), ("fshift", 3, 2, 0),
                ("fshift", 3, 0, 3), ("none", 1, 1, 1), ("fshift", 3, 0, 0)]
    with make_loader(cfg, reader) as loader, make_loader(cfg.replace(backend="torch"), reader) as ref:

        def serve(method, factor, epoch, start=0):
            for each in (loader, ref):
                each.set_phase(method, factor)
            assert_same_batches([list(loader.epoch_batches(epoch, start))], [list(ref.epoch_batches(epoch, start))])

        for step in schedule:
            serve(*step)
        assert loader.builds == 2
        serve("pool-max", 2, 1)  # a third phase: closes the least recently used, none C=1
        serve("fshift", 3, 1)
        assert loader.builds == 3 and len(loader._live) == MAX_LIVE_PIPELINES
        serve("none", 1, 0)
        assert loader.builds == 4
        interrupted = loader.epoch_batches(2)
        next(interrupted)
        interrupted.close()
        serve("none", 1, 2)  # rebuilt: nothing prefetched for the abandoned pass is served
        assert loader.builds == 5
        segments = [live.passes._shm.name for live in loader._live.values()]
    from pathlib import Path

    assert segments and not any(Path("/dev/shm", name).exists() for name in segments)  # closed and removed


@needs_dali
def test_spawned_dali_workers_serve_any_epoch_without_a_rebuild(store, reader, monkeypatch):
    # GPU pipelines spawn their readers: they attach to the loader's pass state by name.
    from c2fdata.pipeline import dali

    monkeypatch.setattr(dali, "_start_method", lambda gpu: "spawn")
    cfg = config(store, method="fshift", factor=2, num_workers=1, **TRAINING)
    with make_loader(cfg.replace(backend="dali"), reader) as spawned:
        ref = make_loader(cfg.replace(backend="torch"), reader)
        for epoch in (0, 1, 0):
            assert_same_batches([list(spawned.epoch_batches(epoch))], [list(ref.epoch_batches(epoch))])
        assert spawned.builds == 1


@pytest.mark.parametrize("backend", [pytest.param("dali", marks=needs_dali), "torch"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("method, factor", [("fshift", 3), ("pool-avg", 2)])
def test_output_dtype_is_the_float32_batch_cast_once(store, reader, backend, dtype, method, factor):
    cfg = config(store, backend=backend, method=method, factor=factor, **TRAINING)
    with make_loader(cfg, reader) as full, make_loader(cfg.replace(output_dtype=dtype), reader) as cast:
        expected = [[{**b, "features": b["features"].to(getattr(torch, dtype))} for b in full]]
        served = collect(cast)
    assert served[0][0]["features"].dtype == getattr(torch, dtype)
    assert_same_batches(expected, served)


@needs_dali
@needs_cuda
def test_gpu_loader_equals_cpu_loader(store, reader):
    cfg = config(store, method="pool-avg", factor=2, **TRAINING)  # TRAINING shuffles
    cpu = make_loader(cfg.replace(backend="torch"), reader)
    with make_loader(cfg.replace(backend="dali", device="gpu"), reader) as gpu:
        for epoch in (0, 1, 0):  # one pipeline serves every epoch, on the GPU too
            served = list(gpu.epoch_batches(epoch))
            assert all(v.is_cuda for b in served for v in b.values())  # labels and index too
            for g, c in zip(served, cpu.epoch_batches(epoch), strict=True):
                torch.testing.assert_close(g["features"].cpu(), c["features"], rtol=1e-6, atol=1e-6)
                assert torch.equal(g["index"].cpu(), c["index"]) and torch.equal(g["labels"].cpu(), c["labels"])
        assert gpu.builds == 1


@needs_cuda
def test_torch_backend_hands_over_from_pinned_memory(store, reader):
    with make_loader(config(store, backend="torch", device="gpu", num_workers=1), reader) as loader:
        loader._requests.start_pass(loader.cfg, 0, 0, len(loader))
        host = next(iter(loader._dataloader()))  # what the DataLoader hands over, before the copy
        assert {k: v.is_pinned() for k, v in host.items()} == {"features": True, "labels": True, "index": True}
        served = next(iter(loader))
        assert all(v.is_cuda for v in served.values())


# -- bad settings ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(method="stretch"), "unknown compression method 'stretch'"),
        (dict(method="fshift", factor=0), "integer >= 1"),
        (dict(method="pool-avg", factor=8, target_frames=6), r"compressing 6 frames by C=8 \(pool-avg\) leaves 0 frames"),
        (dict(rank=2, world_size=2), "rank 2 is not below world_size 2"),
        (dict(device="tpu"), "device must be one of"),
        (dict(backend="jax"), "backend must be one of"),
        (dict(num_samples=10), "balanced=True"),
        (dict(norm_mean=0.0), "both norm_mean and norm_std"),
        (dict(batch_size=0), "batch_size must be an integer >= 1"),
        (dict(output_dtype="int8"), "output_dtype must be one of"),
    ],
)
def test_bad_settings_fail_clearly(store, changes, message):
    with pytest.raises(ValueError, match=message):
        config(store, **changes)


def test_factor_too_large_for_the_store_fails_clearly(store, reader):
    with pytest.raises(ValueError, match=r"compressing 50 frames by C=64 \(fshift\) leaves 0 frames"):
        make_loader(config(store, method="fshift", factor=64, backend="torch"), reader)
    loader = make_loader(config(store, backend="torch"), reader)
    with pytest.raises(ValueError, match="leaves 0 frames"):
        loader.set_phase("pool-max", 51)
    with pytest.raises(ValueError, match="unknown compression method"):
        loader.set_phase("patch", 2)
    assert loader.cfg.method == "none"  # a refused phase changes nothing


def test_store_of_another_format_version_is_refused(store, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(store, old)
    zarr.open_group(str(old), mode="r+").attrs["format_version"] = 0
    with pytest.raises(StoreFormatError, match=r"format version 0.*rebuild it with `c2fdata build`"):
        make_loader(config(old, backend="torch"))


def test_backend_choice(store, reader):
    assert resolve_backend(config(store, backend="auto")) == "torch"  # measured faster on CPU
    assert resolve_backend(config(store, backend="auto", device="gpu")) == ("dali" if dali_available() else "torch")
    assert make_loader(config(store), reader).backend == "torch"
    if dali_available():
        with make_loader(config(store, backend="dali"), reader) as loader:
            assert loader.backend == "dali"


def test_config_round_trips(store):
    cfg = config(store, method="pool-max", factor=4, **TRAINING)
    assert PipelineConfig.from_dict(cfg.to_dict()) == cfg.replace(store=str(store))
    evaluation = cfg.for_evaluation()
    assert not evaluation.augments and not evaluation.shuffle and evaluation.factor == 4
    with pytest.raises(ValueError, match="unknown pipeline config keys"):
        PipelineConfig.from_dict({**cfg.to_dict(), "stride": 2})


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=needs_dali)])
def test_epoch_batches_from_a_start_batch(backend, tmp_path):
    """A resumed run asks for batches k.. of an epoch: the same batches as a full pass's tail,
    and the next epoch starts at batch 0 again."""
    from c2fdata.pipeline import PipelineConfig, make_loader
    from c2fdata.store import create_store_from_arrays
    from c2fdata.vocab import Vocabulary

    rng = np.random.default_rng(0)
    n = 40
    create_store_from_arrays(tmp_path / "s", dataset="t", vocabulary=Vocabulary.from_names(["a", "b"]), multi_label=False,
                             splits={"train": dict(features=rng.normal(size=(n, 32, 128)), frames=np.full(n, 32),
                                                   labels=[["a"]] * n, ids=[str(i) for i in range(n)])})
    cfg = PipelineConfig(tmp_path / "s", "train", batch_size=8, shuffle=True, method="fshift", factor=2,
                         random_offset=True, backend=backend, num_workers=0, num_threads=1)
    full = make_loader(cfg)
    ref = [b["index"].tolist() for b in full.epoch_batches(3)]
    ref_next = [b["index"].tolist() for b in full.epoch_batches(4)]
    full.close()
    resumed = make_loader(cfg)
    tail = list(resumed.epoch_batches(3, start=2))
    assert [b["index"].tolist() for b in tail] == ref[2:]
    assert resumed.epoch == 4
    assert [b["index"].tolist() for b in resumed] == ref_next
    resumed.close()
