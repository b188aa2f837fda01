"""Integrity on every read: a clip whose bytes fail their crc32c is never served.

The reader raises CorruptClipError naming the store, split, row and id; the loaders (both
backends) leave the clip out of its batch with a warning and count it, or raise with
on_corrupt="raise". Each test flips bytes inside one clip's chunk of a real shard file.
"""

import json
import logging
import pickle
import re
import shutil

import numpy as np
import pytest
import torch
import zarr
from conftest import needs_dali

from c2fdata import store as st
from c2fdata.features import FbankConfig
from c2fdata.pipeline import PipelineConfig, make_loader
from c2fdata.pipeline.sampling import missing_clips
from c2fdata.reader import CorruptClipError, StoreReader
from c2fdata.shard_io import ShardedClipReader
from c2fdata.verify import verify_store
from c2fdata.vocab import Vocabulary

BACKENDS = [pytest.param("dali", marks=needs_dali), "torch"]

N_CLIPS, FRAMES, N_MELS, BLOCK = 21, 50, 16, 8  # shards of 8, 8 and 5 clips
BAD = 9  # row of the corrupted clip: the second clip of shard 1
NAMES = ["dog", "cat", "bird"]


def features(n=N_CLIPS, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(-4, 3, (n, FRAMES, N_MELS)).astype(np.float16)
    frames = rng.integers(20, FRAMES + 1, n)
    for i in range(n):
        feats[i, frames[i]:] = 0
    return feats, frames


def make_store(path):
    feats, frames = features()
    st.create_store_from_arrays(
        path, dataset="toy", vocabulary=Vocabulary.from_names(NAMES), multi_label=False,
        splits={"train": dict(features=feats, frames=frames, labels=[[NAMES[i % 3]] for i in range(N_CLIPS)],
                              ids=[f"clip{i}" for i in range(N_CLIPS)])},
        fbank=FbankConfig(n_mels=N_MELS), block_clips=BLOCK,
    )
    return path


def shard_file(path, split="train", block=BAD // BLOCK):
    return path / split / "features" / "c" / str(block) / "0" / "0"


def clip_offset(path, row):
    """(offset, nbytes) of row's chunk inside its shard, from the shard's index (at the end)."""
    data = shard_file(path, block=row // BLOCK).read_bytes()
    index = np.frombuffer(data[-(16 * BLOCK + 4):-4], "<u8").reshape(BLOCK, 2)
    return int(index[row % BLOCK, 0]), int(index[row % BLOCK, 1])


def flip(path, row, at=(10, 11)):
    """Flip bytes inside row's data: values stay finite, the shape stays right."""
    offset, _ = clip_offset(path, row)
    f = shard_file(path, block=row // BLOCK)
    data = bytearray(f.read_bytes())
    for k in at:
        data[offset + k] ^= 0x04
    f.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("integrity") / "clean")


@pytest.fixture(scope="module")
def corrupt(clean, tmp_path_factory):
    path = tmp_path_factory.mktemp("integrity") / "corrupt"
    shutil.copytree(clean, path)
    flip(path, BAD)
    return path


# -- reader -----------------------------------------------------------------------------------
def test_the_flip_is_silent_without_the_check(corrupt):
    """The corruption keeps shape and finite values: only the checksum can tell."""
    x = ShardedClipReader(corrupt / "train" / "features").read(BAD, check=False)
    assert x.shape == (FRAMES, N_MELS) and np.isfinite(x).all()
    assert not np.array_equal(x, features()[0][BAD])


@pytest.mark.parametrize("path", ["direct", "zarr"])
def test_reader_raises_naming_store_split_row_and_id(corrupt, monkeypatch, path):
    if path == "zarr":  # the fallback path for layouts the direct reader does not take
        monkeypatch.setattr(ShardedClipReader, "supports", staticmethod(lambda _: False))
    r = StoreReader(corrupt, "train")
    with pytest.raises(CorruptClipError) as info:
        r[BAD]
    err = info.value
    msg = str(err)
    assert str(corrupt) in msg and "split 'train', row 9" in msg and "'clip9'" in msg
    assert "checksum" in msg and f"c2fdata verify {corrupt}" in msg and "block 1" in msg
    assert f"`c2fdata repair {corrupt} --block train:1`" in msg and "re-run the same `c2fdata build" in msg
    assert (err.path, err.split, err.row, err.clip_id) == (str(corrupt), "train", BAD, "clip9")
    assert isinstance(err, ValueError)
    with pytest.raises(CorruptClipError, match="row 9"):
        r.read_batch([BAD - 1, BAD])
    feats, frames = features()
    for i in set(range(BLOCK, 2 * BLOCK)) - {BAD}:  # the rest of the shard still reads
        x, n, _ = r[i]
        np.testing.assert_array_equal(x, feats[i])
        assert n == frames[i]


def test_error_pickles_with_its_fields(corrupt):
    with pytest.raises(CorruptClipError) as info:
        StoreReader(corrupt, "train")[BAD]
    back = pickle.loads(pickle.dumps(info.value))
    assert str(back) == str(info.value) and (back.split, back.row, back.clip_id) == ("train", BAD, "clip9")
    assert str(CorruptClipError("only a message")) == "only a message"  # as torch rebuilds it


@pytest.mark.parametrize("path", ["direct", "zarr"])
def test_corrupt_shard_index_fails_every_clip_of_its_shard_only(clean, tmp_path, monkeypatch, path):
    if path == "zarr":
        monkeypatch.setattr(ShardedClipReader, "supports", staticmethod(lambda _: False))
    store = tmp_path / "s"
    shutil.copytree(clean, store)
    f = shard_file(store)
    data = bytearray(f.read_bytes())
    data[-20] ^= 0x01  # inside the index: an offset no longer checks out
    f.write_bytes(bytes(data))
    r = StoreReader(store, "train")
    for i in range(BLOCK, 2 * BLOCK):
        with pytest.raises(CorruptClipError, match=f"row {i} "):
            r[i]
    feats, _ = features()
    for i in (0, BLOCK - 1, 2 * BLOCK, N_CLIPS - 1):
        np.testing.assert_array_equal(r[i][0], feats[i])


@pytest.mark.parametrize("how", ["named", "scan"])
def test_the_rebuild_recipe_in_the_message_works(corrupt, tmp_path, how):
    """The command the error names (`repair --block`), or `repair` finding the block itself,
    marks exactly that block for the build to recompute; the store is unfinalised until then."""
    from click.testing import CliRunner

    from c2fdata.cli import main as data_cli

    store = tmp_path / "s"
    shutil.copytree(corrupt, store)
    with pytest.raises(CorruptClipError) as info:
        StoreReader(store, "train")[BAD]
    command = re.search(r"`c2fdata (repair [^`]+)`", str(info.value)).group(1).split()
    args = command if how == "named" else command[:2]  # what the message says, or a scan
    dry = CliRunner().invoke(data_cli, args + ["--dry-run"])
    assert dry.exit_code == 0 and "would mark" in dry.output and shard_file(store).exists()
    r = CliRunner().invoke(data_cli, args)
    assert r.exit_code == 0, r.output
    assert "re-run the `c2fdata build` command" in " ".join(r.output.split())
    group = zarr.open_group(str(store), mode="r+")
    assert st.pending_blocks(group, "train") == [1]  # the build resumes exactly this block
    assert not shard_file(store).exists() and not group.attrs["finalized"]
    with pytest.raises(st.StoreFormatError, match="not finalised"):
        StoreReader(store, "train")
    assert len(StoreReader(store, "train", allow_unfinalized=True)) == N_CLIPS - BLOCK  # pending: not served
    # ... and recomputes it as `c2fdata build` does: write_block, then finalize
    feats, frames = features()
    s, e = BLOCK, 2 * BLOCK
    real = np.concatenate([feats[i, :frames[i]].astype(np.float32) for i in range(s, e)])
    sums = np.array([real.sum(), np.square(real, dtype=np.float64).sum(), real.size])
    st.write_block(group, "train", 1, feats[s:e], frames[s:e], np.full(e - s, st.OK, np.uint8), [""] * (e - s), sums)
    assert st.finalize(group, store) is not None
    np.testing.assert_array_equal(StoreReader(store, "train")[BAD][0], feats[BAD])
    assert verify_store(store) == []


def test_verify_names_the_block_to_rebuild(corrupt):
    problems = verify_store(corrupt)
    assert len(problems) == 1
    assert "row 9" in problems[0] and "checksum" in problems[0] and "block 1" in problems[0]


# -- loaders ----------------------------------------------------------------------------------
def cfg(store, backend, **kw):
    base = dict(batch_size=4, shuffle=True, seed=3, method="fshift", factor=2, target_frames=40,
                random_crop=True, random_offset=True, time_mask_frames=8, freq_mask_bins=4,
                num_workers=0, backend=backend)
    return PipelineConfig(store, "train", **(base | kw))


def collect(loader, epochs=1):
    return [[{k: v.cpu() for k, v in b.items()} for b in loader] for _ in range(epochs)]


def without(batch, clip):
    keep = batch["index"] != clip
    return {k: v[keep] for k, v in batch.items()}


@pytest.fixture(scope="module")
def reference(clean):
    """Two epochs of the clean store (torch backend, in process)."""
    with make_loader(cfg(clean, "torch")) as loader:
        return collect(loader, 2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("workers", [0, 2])
def test_loaders_skip_warn_and_count(corrupt, reference, caplog, backend, workers):
    caplog.set_level(logging.WARNING, logger="c2fdata")
    with make_loader(cfg(corrupt, backend, num_workers=workers)) as loader:
        got = collect(loader, 2)
        assert loader.skipped_clips == [("train", BAD), ("train", BAD)]  # once per epoch
    # every batch: the clean one less the corrupt clip, every other sample with its own draws
    for epoch, (ref, out) in enumerate(zip(reference, got)):
        assert len(ref) == len(out)
        short = 0
        for a, b in zip(ref, out):
            expected = without(a, BAD)
            short += len(expected["index"]) < len(a["index"])
            for key in a:
                assert b[key].dtype == a[key].dtype and torch.equal(b[key], expected[key]), (epoch, key)
        assert short == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "corrupt clip skipped" in r.message]
    assert len(warnings) == 2
    assert all(str(corrupt) in w.message and "split 'train', row 9" in w.message for w in warnings)


@needs_dali
def test_backends_serve_identical_batches_around_a_corrupt_clip(corrupt):
    out = {}
    for backend in ("dali", "torch"):
        with make_loader(cfg(corrupt, backend, num_workers=2)) as loader:
            out[backend] = collect(loader, 2)
            assert loader.skipped_clips == [("train", BAD)] * 2
    for ea, eb in zip(out["dali"], out["torch"]):
        assert len(ea) == len(eb)
        for a, b in zip(ea, eb):
            assert a.keys() == b.keys()
            for key in a:
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_loaders_skip_and_count_like_the_cpu_loader(corrupt, backend):
    """device="gpu": the index is on the GPU, read back only for a short batch."""
    cpu = collect(make_loader(cfg(corrupt, "torch")))
    with make_loader(cfg(corrupt, backend, device="gpu", num_workers=1)) as loader:
        served = list(loader)
        assert all(v.is_cuda for b in served for v in b.values())
        assert loader.skipped_clips == [("train", BAD)]
    for g, c in zip(served, cpu[0], strict=True):
        torch.testing.assert_close(g["features"].cpu(), c["features"], rtol=1e-6, atol=1e-6)
        assert torch.equal(g["index"].cpu(), c["index"]) and torch.equal(g["labels"].cpu(), c["labels"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("workers", [0, 2])
def test_on_corrupt_raise_raises(corrupt, backend, workers):
    with make_loader(cfg(corrupt, backend, num_workers=workers, on_corrupt="raise")) as loader:
        with pytest.raises(CorruptClipError, match="split 'train', row 9") as raised:
            collect(loader)
        assert loader.skipped_clips == []
    if backend == "torch":  # from worker processes too, whole: not rebuilt from its message
        assert (raised.value.split, raised.value.row, raised.value.path) == ("train", 9, str(corrupt))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("workers", [0, 2])
def test_a_batch_of_corrupt_clips_only_raises_even_when_skipping(corrupt, backend, workers):
    with make_loader(cfg(corrupt, backend, batch_size=1, shuffle=False, num_workers=workers)) as loader:
        batches = []
        with pytest.raises(CorruptClipError, match="every clip of batch 9 .* is corrupt"):
            for b in loader:
                batches.append(b)
        assert len(batches) <= BAD  # the batches before it (DALI may prefetch past a few)


def test_bad_on_corrupt_setting_fails_clearly(corrupt):
    with pytest.raises(ValueError, match="on_corrupt must be one of"):
        PipelineConfig(corrupt, on_corrupt="ignore")


@pytest.mark.parametrize("expected, served, missing", [
    ([3, 9, 4], [3, 4], [9]),
    ([9, 1, 9, 2], [1, 2], [9, 9]),  # balanced sampling draws a clip twice
    ([5, 6], [5, 6], []),
])
def test_missing_clips(expected, served, missing):
    assert missing_clips(np.array(expected), np.array(served)) == missing


def test_missing_clips_refuses_what_the_plan_does_not_hold():
    with pytest.raises(ValueError, match="subsequence"):
        missing_clips(np.array([1, 2]), np.array([2, 1]))


def _folder_store(tmp_path, store, monkeypatch=None):
    import soundfile as sf

    from c2fdata.build import BuildConfig, build_store

    for k in range(6):
        (tmp_path / "d" / "train" / "ab"[k % 2]).mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / "d" / "train" / "ab"[k % 2] / f"{k}.wav",
                 (0.1 * np.random.default_rng(k).standard_normal(16000)).astype("float32"), 16000)
    config = BuildConfig(dataset="folder", root=tmp_path / "d", out=store, block_clips=2)
    build_store(config)
    return config


def _flip_first_byte(chunk):
    raw = bytearray(chunk.read_bytes())
    raw[0] ^= 1
    chunk.write_bytes(bytes(raw))


def test_every_metadata_chunk_is_checksummed(tmp_path):
    """zarr.json of every metadata array lists a crc32c codec (read from the file, not our code)."""
    store = tmp_path / "s"
    _folder_store(tmp_path, store)
    for name in ("frames", "status", "errors", "stat_sums", "ids", "labels", "features"):
        codecs = json.dumps(json.loads((store / "train" / name / "zarr.json").read_text())["codecs"])
        assert '"crc32c"' in codecs, (name, codecs)


def test_a_damaged_status_chunk_names_its_block_and_the_recipe_rebuilds_it(tmp_path):
    """One flipped byte in block 1's status chunk: verify names the array and the block with the
    recipe that rebuilds it; readers and info refuse with what to do; following the recipe and
    re-running the build gives the clean store back."""
    from click.testing import CliRunner

    from c2fdata.build import build_store
    from c2fdata.cli import main as data_cli

    store = tmp_path / "s"
    config = _folder_store(tmp_path, store)
    clean = [StoreReader(store, "train")[i][0] for i in range(6)]
    _flip_first_byte(store / "train" / "status" / "c" / "1")
    problems = verify_store(store)
    assert len(problems) == 1 and problems[0].startswith("train: its status cannot be read in block 1 (ValueError: ")
    assert "checksum" in problems[0] and "rebuild block 1 of split 'train' (rows 2..3)" in problems[0]
    with pytest.raises(st.DamagedStoreError, match="split 'train', its status .*c2fdata verify"):
        len(StoreReader(store, "train"))
    r = CliRunner().invoke(data_cli, ["info", str(store)])
    assert r.exit_code == 2 and "part of the store cannot be read" in r.output and "c2fdata verify" in r.output
    command = re.search(r"`c2fdata (repair [^`]+)`", problems[0]).group(1).split()  # what verify says to run
    assert command[-2:] == ["--block", "train:1"]
    r = CliRunner().invoke(data_cli, command)
    assert r.exit_code == 0, r.output
    build_store(config)  # the same build command again: recomputes block 1
    assert verify_store(store) == []
    reader = StoreReader(store, "train")
    for i in range(6):
        np.testing.assert_array_equal(reader[i][0], clean[i])


def test_a_damaged_label_chunk_is_refused_not_served(tmp_path):
    """Labels are written once, from the dataset's metadata: a flipped byte in them fails the
    chunk's crc32c (without it, a wrong label would be served and verify would pass)."""
    store = tmp_path / "s"
    _folder_store(tmp_path, store)
    _flip_first_byte(store / "train" / "labels" / "c" / "0")
    with pytest.raises(st.DamagedStoreError, match="split 'train', its labels"):
        StoreReader(store, "train").labels()
    problems = verify_store(store)
    assert len(problems) == 1 and problems[0].startswith("train: its labels cannot be read (ValueError: ")
    assert "build the store anew" in problems[0]


def test_a_store_without_metadata_checksums_is_read_and_named(tmp_path, monkeypatch):
    """A store built before metadata checksums (zarr's default codecs) is read as before; info
    says that its metadata is unchecked and how to change that."""
    from click.testing import CliRunner

    from c2fdata.cli import main as data_cli

    monkeypatch.setattr(st, "META_CODECS", {})  # what stores were built with before
    store = tmp_path / "old"
    _folder_store(tmp_path, store)
    assert '"crc32c"' not in (store / "train" / "labels" / "zarr.json").read_text()
    assert len(StoreReader(store, "train")) == 6 and verify_store(store) == []
    r = CliRunner().invoke(data_cli, ["info", str(store)])
    assert r.exit_code == 0 and "metadata without checksums" in " ".join(r.output.split())
    assert st.meta_checksummed(st.open_store(store)) is False


def test_repair_marks_nothing_on_a_clean_store_and_refuses_what_it_cannot_fix(clean, tmp_path):
    from click.testing import CliRunner

    from c2fdata.cli import main as data_cli

    store = tmp_path / "s"
    shutil.copytree(clean, store)
    r = CliRunner().invoke(data_cli, ["repair", str(store)])
    assert r.exit_code == 0 and "nothing to rebuild" in r.output and st.open_store(store).attrs["finalized"]
    for block, message in (("train:3", "split 'train' has blocks 0..2, not 3"), ("eval:0", "no split 'eval'"),
                           ("train", "expected SPLIT:BLOCK")):
        r = CliRunner().invoke(data_cli, ["repair", str(store), "--block", block])
        assert r.exit_code == 2 and message in " ".join(r.output.split()), r.output
    # a healthy block named (a mistyped number) is read back and refused, not deleted; --force marks it
    shard = store / "train" / "features" / "c" / "1" / "0" / "0"
    _flip_first_byte(store / "train" / "features" / "c" / "0" / "0" / "0")  # block 0 damaged, block 1 not
    r = CliRunner().invoke(data_cli, ["repair", str(store), "--block", "train:0", "--block", "train:1"])
    assert r.exit_code == 2 and "block(s) train:1 read back whole" in " ".join(r.output.split()), r.output
    assert shard.is_file() and st.open_store(store).attrs["finalized"]  # nothing was changed
    r = CliRunner().invoke(data_cli, ["repair", str(store), "--block", "train:0"])
    assert r.exit_code == 0 and shard.is_file() and not st.open_store(store).attrs["finalized"], r.output
    r = CliRunner().invoke(data_cli, ["repair", str(store), "--block", "train:1", "--force"])
    assert r.exit_code == 0 and not shard.exists(), r.output
    shutil.rmtree(store)
    shutil.copytree(clean, store)
    # labels are written once from the dataset's metadata: no block's rebuild restores them
    _flip_first_byte(store / "train" / "labels" / "c" / "0")
    r = CliRunner().invoke(data_cli, ["repair", str(store)])
    assert r.exit_code == 1 and "not repaired" in r.output and "its labels cannot be read" in r.output
    assert st.open_store(store).attrs["finalized"]  # nothing was changed
    r = CliRunner().invoke(data_cli, ["repair", str(store), "--block", "train:1"])  # not "read back whole"
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and "the clips of block(s) train:1 could not be checked (train: its labels" in said, said


def test_repair_rewrites_a_damaged_status_chunk_of_the_last_short_block(clean, tmp_path):
    """Block 2 holds 5 clips of 8: its status chunk, damaged, is rewritten whole as pending."""
    from c2fdata.repair import mark_for_rebuild, plan_repair

    store = tmp_path / "s"
    shutil.copytree(clean, store)
    _flip_first_byte(store / "train" / "status" / "c" / "2")
    plan = plan_repair(store)
    assert plan.blocks == {"train": [2]} and plan.unrepairable == []
    mark_for_rebuild(store, plan)
    group = st.open_store(store)
    assert st.pending_blocks(group, "train") == [2]
    assert list(st.read_meta(group, "train", "status")) == [st.OK] * 16 + [st.PENDING] * 5


@pytest.mark.parametrize("lost", ["labels", "ids", "status", "frames"])
def test_a_lost_metadata_chunk_file_is_not_read_as_zeros(tmp_path, lost):
    """zarr reads an absent chunk as its fill value: class 0, empty ids, pending clips, no frames.
    Stores with metadata checksums write every chunk, so an absent one is refused by the reader
    and named by verify; repair marks the blocks a rebuild restores (status, frames), and leaves
    a store whose ids or labels are lost to be built anew."""
    from click.testing import CliRunner

    from c2fdata.build import build_store
    from c2fdata.cli import main as data_cli

    store = tmp_path / "s"
    config = _folder_store(tmp_path, store)
    clean = StoreReader(store, "train")
    before = (clean.labels().copy(), clean.frames().copy(), clean.ids)
    chunk = store / "train" / lost / "c" / ("0" if lost in ("labels", "ids") else "1")
    chunk.unlink()
    with pytest.raises(st.DamagedStoreError, match="missing|pending|no frames"):
        r = StoreReader(store, "train")
        r.labels(), r.frames(), r.ids
    problems = verify_store(store)
    assert problems and any(lost in p or "pending" in p for p in problems), problems
    for args in (["info", str(store)], ["info", str(store), "--json"]):  # its figures would count the zeros
        r = CliRunner().invoke(data_cli, args)
        said = {"status": "clips read as pending", "frames": "built clips have no frames recorded"}.get(
            lost, f"chunk files missing: 1 of its {lost}")
        assert r.exit_code == 1 and said in " ".join(r.output.split()), r.output
    r = CliRunner().invoke(data_cli, ["repair", str(store)])
    if lost in ("labels", "ids"):  # written once: nothing in the store restores them
        assert r.exit_code == 1 and "build the store anew" in " ".join(r.output.split())
        assert st.open_store(store).attrs["finalized"]
        return
    assert r.exit_code == 0 and "--train-split train" in " ".join(r.output.split()), r.output
    build_store(config)
    assert verify_store(store) == []
    after = StoreReader(store, "train")
    np.testing.assert_array_equal(after.labels(), before[0])
    np.testing.assert_array_equal(after.frames(), before[1])
    assert after.ids == before[2]


def test_an_older_store_with_a_lost_label_chunk_fails_verify_by_its_fingerprint(tmp_path, monkeypatch):
    """Stores built before metadata checksums skip all-zero chunks, so a missing chunk file is no
    proof there; verify still compares the ids and labels it reads with the fingerprint."""
    monkeypatch.setattr(st, "META_CODECS", {})
    store = tmp_path / "old"
    _folder_store(tmp_path, store)
    (store / "train" / "labels" / "c" / "0").unlink()
    problems = verify_store(store)
    assert len(problems) == 1 and "not those it was built with" in problems[0]


@pytest.mark.parametrize("damaged", ["status", "frames"])
def test_a_damaged_status_or_frames_chunk_hides_no_other_block(tmp_path, damaged):
    """With block 0's status (or frames) unreadable, verify still checks the clips of blocks 1
    and 2 (it checked none of the split's before), so one repair and rebuild fixes both."""
    from click.testing import CliRunner

    from c2fdata.build import build_store
    from c2fdata.cli import main as data_cli

    store = tmp_path / "s"
    config = _folder_store(tmp_path, store)  # 6 clips, 2 per block
    clean = [StoreReader(store, "train").features(i).copy() for i in range(6)]
    _flip_first_byte(store / "train" / damaged / "c" / "0")
    shard = store / "train" / "features" / "c" / "2" / "0" / "0"  # block 2: a clip's bytes changed
    data = bytearray(shard.read_bytes())
    offset = int(np.frombuffer(data[-(16 * 2 + 4):-4], "<u8").reshape(2, 2)[1, 0])  # its second clip
    data[offset + 10] ^= 0x04
    shard.write_bytes(bytes(data))
    problems = verify_store(store)
    assert any(f"its {damaged} cannot be read in block 0" in p for p in problems), problems
    assert any("(row 5): unreadable" in p and "block 2" in p for p in problems), problems
    assert not any("row 0)" in p or "row 1)" in p for p in problems), problems  # block 0's clips: not judged
    r = CliRunner().invoke(data_cli, ["repair", str(store)])
    assert r.exit_code == 0 and "2 block(s)" in r.output, r.output
    build_store(config)
    assert verify_store(store) == []
    for i in range(6):
        np.testing.assert_array_equal(StoreReader(store, "train").features(i), clean[i])


def test_info_finds_no_damage_in_an_unfinished_or_repaired_store(tmp_path):
    """Blocks not built yet (a sharded build half done) or marked by repair have no status or
    frames chunk files: pending, not lost."""
    import dataclasses

    from click.testing import CliRunner

    from c2fdata.build import build_store
    from c2fdata.cli import main as data_cli

    store = tmp_path / "s"
    config = _folder_store(tmp_path, store)
    r = CliRunner().invoke(data_cli, ["repair", str(store), "--block", "train:1", "--force"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(data_cli, ["info", str(store)])
    assert r.exit_code == 0 and "damaged" not in r.output, r.output
    half = tmp_path / "half"
    build_store(dataclasses.replace(config, out=half, shard=(0, 2)))
    assert not st.open_store(half).attrs["finalized"]
    r = CliRunner().invoke(data_cli, ["repair", str(half), "--block", "train:1"])  # the other shard's: not built yet
    assert r.exit_code == 2 and "block(s) train:1 hold no built clip (pending" in " ".join(r.output.split()), r.output
    r = CliRunner().invoke(data_cli, ["info", str(half)])
    assert r.exit_code == 0 and "damaged" not in r.output, r.output


def test_a_failed_whole_array_read_leaves_no_read_running(tmp_path):
    """zarr reads a metadata array's chunks concurrently; when one fails its crc32c the others
    ran on, and a command exiting on the error destroyed them mid-flight: pages of asyncio's
    "Task was destroyed but it is pending!" under the one-line error, in about half the runs."""
    import asyncio

    from zarr.core.sync import sync

    async def others_running() -> int:
        return len([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])

    store = tmp_path / "s"
    rng = np.random.default_rng(0)
    n = 400
    st.create_store_from_arrays(
        store, dataset="t", vocabulary=Vocabulary.from_names(["a", "b"]), multi_label=False, block_clips=4,
        splits={"train": {"features": rng.standard_normal((n, 8, 128)).astype(np.float16), "frames": np.full(n, 8),
                              "labels": [["ab"[i % 2]] for i in range(n)], "ids": [str(i) for i in range(n)]}})
    _flip_first_byte(store / "train" / "status" / "c" / "3")  # one of 100 chunks
    for _ in range(5):
        with pytest.raises(st.DamagedStoreError, match="its status"):
            st.read_meta(st.open_store(store), "train", "status")
        assert sync(others_running()) == 0


@pytest.mark.parametrize("document", ["train/status/zarr.json", "train/features/zarr.json", "zarr.json"])
def test_a_damaged_zarr_json_is_named_by_every_reader(tmp_path, document):
    """zarr fails on a truncated zarr.json with a bare JSON error naming no file (and verify
    showed a traceback): every way in names the file and says what to do."""
    from click.testing import CliRunner

    from c2fdata.cli import main as data_cli
    from c2fdata.reader import StoreReader

    store = tmp_path / "s"
    _folder_store(tmp_path, store)
    meta = store / document
    meta.write_text(meta.read_text()[:40])  # truncated
    named = f"unreadable store metadata, not JSON: {meta} ("
    problems = verify_store(store)
    assert len(problems) == 1 and problems[0].startswith(named) and "restored from a copy" in problems[0], problems
    with pytest.raises(st.DamagedStoreError, match=re.escape(named)):
        StoreReader(store, "train")
    for command in (["verify"], ["info"], ["info", "--problems"], ["repair"], ["finalize"]):
        r = CliRunner().invoke(data_cli, [command[0], str(store), *command[1:]])
        out = " ".join(r.output.split())
        assert r.exit_code in (1, 2) and named in out and "Traceback" not in out, (command, r.output)
    assert meta.read_text() == (store / document).read_text()  # repair touched nothing


def test_repair_then_rebuild_keeps_the_statistics_split_chosen_with_finalize(tmp_path):
    """A split chosen with `finalize --train-split` outlives a repair: the rebuild that would
    take the build's own guess instead is refused, saying which option keeps it."""
    import soundfile as sf

    from c2fdata.build import BuildConfig, build_store
    from c2fdata.repair import mark_for_rebuild, plan_repair

    for split in ("train", "valid"):
        for k in range(4):
            (tmp_path / "d" / split / "ab"[k % 2]).mkdir(parents=True, exist_ok=True)
            sf.write(tmp_path / "d" / split / "ab"[k % 2] / f"{k}.wav",
                     (0.1 * (1 + k) * np.random.default_rng(k).standard_normal(16000)).astype("float32"), 16000)
    store = tmp_path / "s"
    config = BuildConfig(dataset="folder", root=tmp_path / "d", out=store, block_clips=2)
    build_store(config)
    group = zarr.open_group(str(store), mode="r+")
    chosen = st.finalize(group, store, train_split="valid")
    mark_for_rebuild(store, plan_repair(store, [("train", 0)], force=True))  # a healthy block: forced
    with pytest.raises(st.StoreFormatError,
                       match=r"being rebuilt \(repair\) with normalisation statistics from split 'valid'.*--train-split valid"):
        build_store(config)
    build_store(BuildConfig(dataset="folder", root=tmp_path / "d", out=store, block_clips=2,
                            options={"train_split": "valid"}))  # what --train-split valid passes
    assert st.open_store(store).attrs["stats"] == chosen and verify_store(store) == []
