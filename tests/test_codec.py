"""Feature codecs: the q32 format against an independent rounding, every codec's store read back
through zarr's own API and the direct shard path (equal), error bounds against the float32
features, corruption and missing shards raising, old float16 stores still opening."""

import json
import shutil

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from c2fdata import store as st
from c2fdata.build import BuildConfig, build_store
from c2fdata.cli import main as cli
from c2fdata.codec import CODECS, QuantizedLogMel, get_codec
from c2fdata.features import FbankConfig, fbank
from c2fdata.reader import CorruptClipError, StoreReader
from c2fdata.shard_io import ShardedClipReader
from c2fdata.verify import verify_store
from c2fdata.vocab import Vocabulary
from conftest import tone

N, T, F, BLOCK = 11, 70, 16, 4  # T not a multiple of the codec's 32-frame blocks
NAMES = ["a", "b"]


def logmel_like(n=N, seed=0):
    """float32 (n, T, F): smooth bins plus noise, zero padding after `frames`, outliers."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(-4, 3, (n, 1, F)) + rng.normal(0, 1.5, (n, T, F))).astype(np.float32)
    x[0, 5, 3], x[1, 9, 0] = 40.0, -30.0  # residuals far beyond +-127 steps: escaped
    frames = rng.integers(T // 2, T + 1, n)
    frames[2] = T
    for i in range(n):
        x[i, frames[i]:] = 0
    return x, frames


def make_store(path, codec, x=None, frames=None):
    if x is None:
        x, frames = logmel_like()
    st.create_store_from_arrays(
        path, dataset="toy", vocabulary=Vocabulary.from_names(NAMES), multi_label=False,
        splits={"train": dict(features=x, frames=frames, labels=[[NAMES[i % 2]] for i in range(len(x))],
                              ids=[f"c{i}" for i in range(len(x))])},
        fbank=FbankConfig(n_mels=F), block_clips=BLOCK, codec=codec,
    )
    return path


@pytest.mark.parametrize("entropy", ["lz4", "zstd"])
def test_q32_decodes_to_the_rounding_to_a_32nd(entropy):
    fmt = QuantizedLogMel(entropy=entropy)
    x, _ = logmel_like()
    for clip in list(x) + [np.zeros((T, F), np.float32), np.full((T, F), -15.9, np.float32)]:
        expected = np.round(clip.astype(np.float64) * 32) / 32  # independent of the codec's code
        got = fmt.decode(fmt.encode(clip), (T, F))
        np.testing.assert_array_equal(got, expected.astype(np.float32))
        assert np.abs(got - clip).max() <= 1 / 64
        np.testing.assert_array_equal(fmt.decode_float16(fmt.encode(clip), (T, F)), expected.astype(np.float16))


def test_q32_is_smaller_than_float16_on_noisy_logmel():
    x, _ = logmel_like(seed=1)
    for entropy in ("lz4", "zstd"):
        size = sum(len(QuantizedLogMel(entropy=entropy).encode(c)) for c in x)
        assert size < 0.6 * x.size * 2, (entropy, size / (x.size * 2))


@pytest.mark.parametrize("codec", list(CODECS))
def test_store_reads_back_through_zarr_and_the_direct_path(tmp_path, codec):
    x, frames = logmel_like()
    path = make_store(tmp_path / codec, codec, x, frames)
    reader = StoreReader(path, "train")
    array = zarr.open_array(str(path / "train" / "features"), mode="r")  # zarr's own API
    fast = ShardedClipReader(path / "train" / "features")
    bound = 1 / 64 if not get_codec(codec).lossless else 2.0**-11 * np.abs(x).max()  # float16's half step
    assert reader.attrs["codec"] == codec
    assert reader.attrs["format_version"] == {"float16": 1, "float16-zstd": 2}.get(codec, 3)
    for i in range(N):
        served = reader.features(i)
        assert served.dtype == np.float16 and served.shape == (T, F)
        np.testing.assert_array_equal(served.astype(np.float32), np.asarray(array[i], np.float32))
        np.testing.assert_array_equal(served, fast.read(i))
        assert np.abs(served.astype(np.float32) - x[i]).max() <= bound
        assert not served[frames[i]:].any()  # padding stays exactly zero
    # statistics from the values served, over real frames only
    real = np.concatenate([reader.features(i)[: frames[i]].astype(np.float64) for i in range(N)])
    assert reader.mean == pytest.approx(real.mean(), rel=1e-9)


@pytest.mark.parametrize("codec", ["float16-zstd", "q32-lz4"])
def test_a_flipped_byte_in_a_compressed_clip_is_never_served(tmp_path, codec):
    path = make_store(tmp_path / codec, codec)
    shard = path / "train" / "features" / "c" / "1" / "0" / "0"
    data = bytearray(shard.read_bytes())
    index = np.frombuffer(bytes(data[-(16 * BLOCK + 4):-4]), "<u8").reshape(BLOCK, 2)
    data[int(index[1, 0]) + 9] ^= 0x10  # row 5 = second clip of block 1
    shard.write_bytes(bytes(data))
    reader = StoreReader(path, "train")
    with pytest.raises(CorruptClipError, match=r"split 'train', row 5 .*crc32c") as err:
        reader.features(5)
    assert (err.value.split, err.value.row) == ("train", 5)
    reader.features(4)  # its neighbours still read
    assert any("row 5" in p for p in verify_store(path))


@pytest.mark.parametrize("direct", [True, False])
def test_a_deleted_shard_raises_instead_of_reading_zeros(tmp_path, monkeypatch, direct):
    path = make_store(tmp_path / "s", "q32-lz4")
    (path / "train" / "features" / "c" / "1" / "0" / "0").unlink()
    if not direct:
        monkeypatch.setattr(ShardedClipReader, "supports", staticmethod(lambda _: False))
    reader = StoreReader(path, "train")
    with pytest.raises(CorruptClipError, match=r"row 6 .*shard file missing.*rebuild block 1") as err:
        reader.features(6)
    assert (err.value.path, err.value.split, err.value.row, err.value.clip_id) == (str(path), "train", 6, "c6")
    reader.features(3)
    problems = verify_store(path)
    assert sum("missing" in p for p in problems) == BLOCK


def test_a_float16_store_of_format_1_without_codec_attribute_still_opens(tmp_path):
    x, frames = logmel_like()
    path = make_store(tmp_path / "old", "float16", x, frames)
    meta = json.loads((path / "zarr.json").read_text())
    del meta["attributes"]["codec"]  # as written before codecs existed
    (path / "zarr.json").write_text(json.dumps(meta))
    reader = StoreReader(path, "train")
    np.testing.assert_array_equal(reader.features(3), x[3].astype(np.float16))
    assert verify_store(path) == []
    # a float16 store's fingerprint is what it was before codecs, so an old build still resumes
    old = meta["attributes"]
    assert st.fingerprint(old, {}) == st.fingerprint({**old, "codec": "float16"}, {})
    assert st.fingerprint(old, {}) != st.fingerprint({**old, "codec": "q32-lz4"}, {})


def test_unknown_codec_and_codec_mismatch_are_refused_clearly(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown codec 'lilcom'; choose one of float16, float16-zstd"):
        BuildConfig(dataset="folder", out=tmp_path / "x", codec="lilcom")
    result = CliRunner().invoke(cli, ["build", "--dataset", "instruments", "--codec", "lilcom", "--out", "x"])
    assert result.exit_code == 2 and "lilcom" in result.output and "q32-lz4" in result.output
    path = make_store(tmp_path / "s", "q32-zstd")
    attrs = json.loads((path / "zarr.json").read_text())
    attrs["attributes"]["codec"] = "brotli-9"
    (path / "zarr.json").write_text(json.dumps(attrs))
    with pytest.raises(st.StoreFormatError, match="unknown codec 'brotli-9'.*release that wrote it"):
        StoreReader(path, "train")


def test_build_with_a_codec_end_to_end(tmp_path):
    root = tmp_path / "audio"
    for i in range(6):
        (root / "train" / f"k{i % 2}").mkdir(parents=True, exist_ok=True)
        import soundfile as sf

        sf.write(root / "train" / f"k{i % 2}" / f"{i}.wav", tone(1.0, seed=i, freq=300 + 40 * i), 16000)
    out = tmp_path / "store"
    res = build_store(BuildConfig(dataset="folder", root=root, out=out, codec="q32-lz4", block_clips=4))
    assert res.finalized and res.failed == 0
    reader = StoreReader(out, "train")
    assert reader.attrs["codec"] == "q32-lz4" and verify_store(out) == []
    for i, clip_id in enumerate(reader.ids):
        audio, sr = __import__("soundfile").read(root / "train" / f"{clip_id}.wav", dtype="float32")
        reference = fbank(audio, sr, FbankConfig()).numpy()  # float32, computed independently of the store
        served = reader.features(i)[: reader.frames()[i]].astype(np.float32)
        assert np.abs(served - reference).max() <= 1 / 64 + 1e-6
    # a resumed build with another codec is refused, naming both
    with pytest.raises(st.StoreFormatError, match="keeps features as q32-lz4, not float16"):
        build_store(BuildConfig(dataset="folder", root=root, out=out, block_clips=4))
    shutil.rmtree(out)


def test_q32_picks_short_blocks_where_the_sound_changes_fast():
    """Onsets every 8 frames: 32-frame means leave residuals beyond +-127 steps (kept at 6 bytes
    each); the per-clip choice of 8-frame blocks avoids them and is smaller."""
    rng = np.random.default_rng(3)
    x = np.repeat(rng.normal(-5, 6, (16, 1, F)), 8, axis=1).reshape(128, F).astype(np.float32)
    x += rng.normal(0, 0.2, x.shape).astype(np.float32)
    adaptive, fixed = QuantizedLogMel(), QuantizedLogMel(block_frames=(32,))
    assert len(adaptive.encode(x)) < 0.8 * len(fixed.encode(x))
    for fmt in (adaptive, fixed):
        np.testing.assert_array_equal(fmt.decode(fmt.encode(x), x.shape), (np.round(x * 32) / 32).astype(np.float32))


def _legacy_q32_lz4(x: np.ndarray) -> bytes:
    """The q32 bytes of stores built before the int8 layout and the raw flag, written here from the
    format's description (not with the codec's code): 32-frame blocks, zigzag residual bytes
    (escape 255), header (rows, escapes, block frames, two zero bytes), always lz4."""
    import struct

    from numcodecs import LZ4

    q = np.rint(x.astype(np.float64) * 32).astype(np.int64)
    rows = int(np.flatnonzero(q.any(axis=1))[-1]) + 1
    q = q[:rows]
    starts = np.arange(0, rows, 32)
    base = np.stack([np.rint(q[s:s + 32].mean(axis=0)) for s in starts]).astype(np.int64)
    r = (q - np.repeat(base, 32, axis=0)[:rows]).reshape(-1)
    esc = np.flatnonzero(np.abs(r) > 127)
    z = np.where(r >= 0, 2 * r, -2 * r - 1)
    z[esc] = 255
    deltas = np.diff(base, axis=0, prepend=0).astype("<i2")
    body = deltas.tobytes() + esc.astype("<u4").tobytes() + r[esc].astype("<i2").tobytes() + z.astype(np.uint8).tobytes()
    return struct.pack("<IIHxx", rows, esc.size, 32) + bytes(LZ4().encode(body))


def test_q32_bytes_of_the_zigzag_layout_still_decode():
    x, _ = logmel_like(seed=4)
    legacy = QuantizedLogMel(residuals="zigzag")
    for clip in x:
        expected = np.round(clip.astype(np.float64) * 32) / 32
        np.testing.assert_array_equal(legacy.decode(_legacy_q32_lz4(clip), (T, F)), expected.astype(np.float32))


def test_a_q32_store_without_the_residuals_key_reads_as_zigzag(tmp_path, monkeypatch):
    """A store's codec configuration written before the int8 layout has no `residuals` key: such
    a store must read as zigzag, never as int8 (which would serve wrong values silently)."""
    from c2fdata import codec as codec_module

    old = codec_module.CODECS["q32-lz4"]
    zigzag = codec_module.FeatureCodec(old.name, old.help, old.lossless, old.dtype,
                                       QuantizedLogMel(residuals="zigzag"))
    monkeypatch.setitem(codec_module.CODECS, "q32-lz4", zigzag)
    x, frames = logmel_like(seed=5)
    path = make_store(tmp_path / "old", "q32-lz4", x, frames)
    monkeypatch.setitem(codec_module.CODECS, "q32-lz4", old)
    meta_path = path / "train" / "features" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    serializer = meta["codecs"][0]["configuration"]["codecs"][0]
    assert serializer["configuration"].pop("residuals") == "zigzag"
    meta_path.write_text(json.dumps(meta))
    reader = StoreReader(path, "train")
    array = zarr.open_array(str(path / "train" / "features"), mode="r")
    for i in range(N):
        expected = (np.round(x[i].astype(np.float64) * 32) / 32).astype(np.float16)
        np.testing.assert_array_equal(reader.features(i), expected)
        np.testing.assert_array_equal(np.asarray(array[i], np.float16), expected)


def test_q32_stores_a_body_raw_where_the_entropy_coder_saves_little():
    """Noise-like residual bytes: lz4 saves ~1%, and the clip is stored raw (flag 1, the header
    plus the body's exact size); a repeating tone: lz4 saves most of it and is kept."""
    rng = np.random.default_rng(6)
    noisy = rng.normal(-4, 2, (256, 64)).astype(np.float32)
    tonal = np.tile(rng.normal(-4, 2, (8, 64)), (32, 1)).astype(np.float32)
    fmt = QuantizedLogMel()
    for clip, raw in ((noisy, True), (tonal, False)):
        data = fmt.encode(clip)
        assert data[10] == raw, data[10]  # the flags byte of the 12-byte header
        if raw:
            blocks = -(-256 // int.from_bytes(data[8:10], "little"))
            escapes = int.from_bytes(data[4:8], "little")
            assert len(data) == 12 + 2 * blocks * 64 + 6 * escapes + 256 * 64
        else:
            assert len(data) < 0.5 * clip.size
        np.testing.assert_array_equal(fmt.decode(data, clip.shape), (np.round(clip * 32) / 32).astype(np.float32))
    bad = bytearray(fmt.encode(noisy))
    bad[10] = 0x80
    with pytest.raises(ValueError, match="flags 0x80"):
        fmt.decode(bytes(bad), noisy.shape)
    with pytest.raises(ValueError, match="residuals must be one of"):
        QuantizedLogMel(residuals="gray")


def test_int8_and_zigzag_residual_bytes_compress_to_the_same_size():
    """The two layouts relabel bytes one-to-one, which neither lz4 nor zstd's byte coding can see."""
    x, _ = logmel_like(seed=7)
    for entropy in ("lz4", "zstd"):
        for clip in x:
            a = QuantizedLogMel(entropy=entropy, residuals="int8").encode(clip)
            b = QuantizedLogMel(entropy=entropy, residuals="zigzag").encode(clip)
            assert abs(len(a) - len(b)) <= 0.01 * len(b) + 16


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_loader_worker_processes_serve_a_q32_store_as_the_main_process(tmp_path, backend):
    """Reader processes decode q32 with torch on one thread (the DALI source sets it on its first
    batch, DataLoader in its workers): their batches equal those read in the main process, and
    the features are the rounding to 1/32, normalised."""
    from c2fdata.pipeline import PipelineConfig, make_loader
    from test_pipeline import assert_same_batches, collect, needs_dali

    if backend == "dali" and needs_dali.args[0]:
        pytest.skip(needs_dali.kwargs["reason"])
    x, frames = logmel_like(seed=8)
    path = make_store(tmp_path / "q32", "q32-lz4", x, frames)
    reader = StoreReader(path, "train")
    cfg = PipelineConfig(path, "train", batch_size=4, num_workers=0, num_threads=1, seed=3, backend=backend,
                         shuffle=True, method="pool-max", factor=2)
    with make_loader(cfg, reader) as inline, make_loader(cfg.replace(num_workers=1), reader) as workers:
        a, b = collect(inline, 2), collect(workers, 2)
    assert_same_batches(a, b)
    batch = a[0][0]
    i = int(batch["index"][0])
    rounded = (np.round(x[i].astype(np.float64) * 32) / 32).astype(np.float16).astype(np.float32)
    expected = (rounded - reader.mean) / (2 * reader.std)  # AST's normalisation, then max over 2 frames
    pooled = expected[: (T // 2) * 2].reshape(T // 2, 2, F).max(axis=1)
    np.testing.assert_allclose(batch["features"][0].numpy(), pooled, atol=1e-5)


def test_bad_q32_chunks_raise_value_errors_and_the_zarr_codec_defaults_to_int8():
    """Every malformed chunk is a ValueError (the zarr path's error, CorruptClipError through the
    shard reader); the codec as constructed writes int8, as read from a configuration without
    `residuals` (a version-2 store) zigzag."""
    from c2fdata.codec import QuantizedLogMelCodec

    fmt = QuantizedLogMel()
    tonal = np.tile(np.random.default_rng(9).normal(-4, 2, (8, F)), (8, 1)).astype(np.float32)
    good = fmt.encode(tonal)
    assert good[10] == 0  # entropy-coded
    with pytest.raises(ValueError, match="shorter than its 12-byte header"):
        fmt.decode(good[:7], tonal.shape)
    with pytest.raises(ValueError, match="does not decompress"):
        fmt.decode(good[:12] + bytes(len(good) - 12), tonal.shape)
    empty = bytearray(fmt.encode(np.zeros_like(tonal)))
    empty[10] = 0x40
    with pytest.raises(ValueError, match="flags 0x40"):
        fmt.decode(bytes(empty), tonal.shape)
    assert QuantizedLogMelCodec().fmt.residuals == "int8"
    config = QuantizedLogMelCodec().to_dict()
    assert QuantizedLogMelCodec.from_dict(config) == QuantizedLogMelCodec()
    del config["configuration"]["residuals"]
    assert QuantizedLogMelCodec.from_dict(config).fmt.residuals == "zigzag"
