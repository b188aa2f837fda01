"""How a store keeps its features: the codecs `c2fdata build --codec` offers, one home for each.

A codec is chosen at build time and recorded in the store's `codec` attribute; every reader
(the direct shard path, zarr's own API, the loaders, show, verify) decodes it transparently and
serves float16 `(T, F)` clips whatever the codec. Every codec keeps a crc32c per clip.

    float16       raw float16, 2 bytes a value: the reference, and the default
    float16-zstd  the same values, lossless: byte-shuffled and zstd-compressed (zarr's blosc codec)
    q32-lz4       log-mel rounded to 1/32 (max error 1/64, as lhotse's lilcom store): a mean per
                  8-32 frames x mel bin, one signed byte of residual per value (rare outliers kept
                  exactly on the side), then lz4 where it saves 1/16 of a clip. Decodes in ~5
                  numpy/torch passes, no Python loop.
    q32-zstd      the same residuals, zstd instead of lz4: smaller, slower to decode

The q32 codecs are a zarr v3 array-to-bytes codec, "c2f.quantized_logmel", registered with zarr
when this module is imported (and through the `zarr.codecs` entry point), so that zarr's own API
reads such a store too. Their array dtype is float32: quantising from float16 would add float16's
rounding to 1/64. Measurements behind the choice: docs/STORE.md.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

import numpy as np
from numcodecs import LZ4, Zstd
from numcodecs import blosc as _blosc
from zarr.abc.codec import ArrayBytesCodec
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.common import parse_named_configuration
from zarr.registry import register_codec

if TYPE_CHECKING:
    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

__all__ = ["CODECS", "DEFAULT_CODEC", "FeatureCodec", "QuantizedLogMel", "get_codec", "clip_decoder"]

ZARR_NAME = "c2f.quantized_logmel"
# rows encoded (trailing all-zero rows left out), escapes, block frames, flags (a pad byte, 0, in
# stores built before flags: the same meaning as no flag set)
_HEADER = struct.Struct("<IIHBx")
_RAW = 1  # flag: the body is stored as is, without the entropy coder (it saved too little)
# Entropy-code a clip's body only where that saves at least 1/16 of it: lz4 on noisy clips' residual
# bytes saves ~1% and costs ~16 us a read (of ~100), while on tonal or quiet clips it saves 20-50%.
_MIN_SAVING = 1 / 16
# The byte of a residual outside [-127, 127], whose exact value is kept aside: -128 as int8;
# 255 in the zigzag bytes of stores built before the int8 layout (both are decoded).
_ESCAPE = {"int8": 128, "zigzag": 255}
RESIDUALS = ("int8", "zigzag")
_ENTROPY = {"lz4": lambda: LZ4(acceleration=1), "zstd": lambda: Zstd(level=3)}


_CAST_CHUNK = 32768  # torch's parallel grain: a cast of at most this many values stays on this thread


def _to_float16(x: np.ndarray) -> np.ndarray:
    """float32 -> float16 through torch's vectorised cast (numpy's takes ~350 us a clip here).
    Where torch may use several threads, in slices no larger than its parallel grain: a
    whole-clip cast wakes torch's thread pool, which in loader worker processes on a busy
    machine took 0.35-4 ms instead of ~40 us. With one thread (DataLoader workers set it), one
    call: each slice costs ~4 us of dispatch."""
    import torch  # here, not at the top: DALI's spawned reader processes of float16 stores never pay its import

    out = np.empty(x.shape, np.float16)
    src, dst = torch.from_numpy(x.reshape(-1)), torch.from_numpy(out.reshape(-1))
    if torch.get_num_threads() == 1:
        dst.copy_(src)
        return out
    for k in range(0, src.numel(), _CAST_CHUNK):
        dst[k: k + _CAST_CHUNK].copy_(src[k: k + _CAST_CHUNK])
    return out


def _zigzag_decode(z: np.ndarray) -> np.ndarray:
    """uint8 zigzag codes -> int8 residuals, in uint8 arithmetic (0, 1, 2, 3 -> 0, -1, 1, -2)."""
    return ((z >> 1) ^ (np.uint8(0) - (z & 1))).view(np.int8)


@dataclass(frozen=True)
class QuantizedLogMel:
    """The q32 format of one clip (T, F): pure encode/decode functions.

    Values are rounded to 1/steps_per_unit. Each block of frames has a per-bin base (the
    rounded mean: noise-like log-mel varies around it less than from frame to frame, and adding
    a base back is one broadcast, where a time delta needs a slow prefix sum), stored as int16
    deltas from the previous block; each value keeps its residual from that base as one signed
    byte; residuals beyond +-127 steps (note onsets inside a block) are escaped (byte -128) and
    kept as (position, int16) pairs. The block length is chosen per clip among `block_frames`:
    long blocks cost fewer bases, short ones fewer escapes where the sound changes fast; the
    clip's header says which. Trailing all-zero frames (the store's zero padding) are not
    encoded.

    `residuals="zigzag"` is the byte layout of stores built before "int8" (0, -1, 1, -2 as 0, 1,
    2, 3; escape 255): the same sizes (lz4 and zstd see a byte-for-byte relabelling), one more
    decode pass. It is read, and written only by tests.
    """

    steps_per_unit: int = 32
    block_frames: tuple[int, ...] = (32, 16, 8)
    entropy: str = "lz4"
    residuals: str = "int8"

    def __post_init__(self):
        object.__setattr__(self, "block_frames", tuple(int(b) for b in self.block_frames))
        if self.entropy not in _ENTROPY:
            raise ValueError(f"entropy must be one of {sorted(_ENTROPY)}, got {self.entropy!r}")
        if self.residuals not in RESIDUALS:
            raise ValueError(f"residuals must be one of {RESIDUALS}, got {self.residuals!r}")
        if self.steps_per_unit < 1 or not self.block_frames or min(self.block_frames) < 1 or max(self.block_frames) > 65535:
            raise ValueError(f"steps_per_unit and block_frames must be >= 1, got {self}")
        if any(b % min(self.block_frames) for b in self.block_frames):
            raise ValueError(f"block_frames must be multiples of the shortest, got {self.block_frames}")

    @property
    def _coder(self):
        return _ENTROPY[self.entropy]()

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """float (T, F) -> int32 steps; the values this codec serves are quantize(x) / steps."""
        limit = 2**14 - 1  # |x| < 512: residuals then fit int16; log-mel never comes near
        return np.clip(np.rint(np.asarray(x, np.float32) * self.steps_per_unit), -limit, limit).astype(np.int32)

    def encode(self, x: np.ndarray) -> bytes:
        """(T, F) float -> bytes."""
        q = self.quantize(x)
        nonzero = np.flatnonzero(q.any(axis=1))
        rows = int(nonzero[-1]) + 1 if nonzero.size else 0
        q = q[:rows]
        best = None
        finest = min(self.block_frames)
        fine_sums = np.add.reduceat(q, np.arange(0, rows, finest), axis=0) if rows else np.zeros((0, q.shape[1]))
        for b in self.block_frames:  # the rows x F residual bytes are the same for every b
            base = self._bases(fine_sums, rows, finest, b)  # (blocks, F)
            r = q - np.repeat(base, b, axis=0)[:rows]  # (rows, F)
            esc = np.flatnonzero((r < -127) | (r > 127))
            cost = 2 * base.size + 6 * esc.size
            if best is None or cost < best[0]:
                best = (cost, b, base, r, esc)
        _, b, base, r, esc = best
        flat = r.reshape(-1)
        if self.residuals == "int8":
            z = flat.astype(np.int8).view(np.uint8)  # exact within +-127; escapes overwritten next
        else:
            z = ((flat << 1) ^ (flat >> 31)).astype(np.uint8)
        z[esc] = _ESCAPE[self.residuals]
        deltas = np.diff(base, axis=0, prepend=np.zeros((1, base.shape[1]), np.int32)).astype(np.int16)
        body = (deltas.tobytes() + esc.astype("<u4").tobytes() + flat[esc].astype("<i2").tobytes()
                + z.tobytes())
        packed = bytes(self._coder.encode(body))
        if len(packed) > (1 - _MIN_SAVING) * len(body):
            return _HEADER.pack(rows, esc.size, b, _RAW) + body
        return _HEADER.pack(rows, esc.size, b, 0) + packed

    @staticmethod
    def _bases(fine_sums: np.ndarray, rows: int, finest: int, block: int) -> np.ndarray:
        """Rounded per-bin means of blocks of `block` rows, from the sums over `finest` rows
        (one pass over the clip serves every block length)."""
        blocks = -(-rows // block)
        sums = np.add.reduceat(fine_sums, np.arange(0, len(fine_sums), block // finest), axis=0) if rows else fine_sums
        counts = np.minimum(block, rows - np.arange(blocks) * block)[:, None]
        return np.rint(sums / counts).astype(np.int32)

    def decode_steps(self, data, shape: tuple[int, int]) -> np.ndarray:
        """bytes -> (T, F) int16 steps (value = steps / steps_per_unit).

        Integer work is done in int16 (half the bytes of float32 per pass: decode speed is what
        random reads are limited by); the block bases' prefix sum by torch (numpy's cumsum over
        axis 0 is a scalar loop, ~12 us for 32 x 128)."""
        t, f = shape
        if len(memoryview(data)) < _HEADER.size:
            raise ValueError(f"q32 chunk of {len(memoryview(data))} bytes, shorter than its {_HEADER.size}-byte header")
        rows, n_esc, b, flags = _HEADER.unpack_from(data)
        if rows > t or b < 1 or flags & ~_RAW:
            raise ValueError(f"q32 chunk header: {rows} rows (the clip has {t}), blocks of {b}, flags {flags:#x}")
        out = np.empty((t, f), np.int16)
        out[rows:] = 0
        if rows == 0:
            return out
        body = memoryview(data)[_HEADER.size:]
        if not flags & _RAW:
            try:
                body = self._coder.decode(body)
            except Exception as err:  # numcodecs raises RuntimeError; a bad chunk is a ValueError here
                raise ValueError(f"q32 chunk body does not decompress ({self.entropy}): {err}") from err
        blocks = -(-rows // b)
        o = 0
        deltas = np.frombuffer(body, "<i2", blocks * f, o).reshape(blocks, f)
        o += deltas.nbytes
        pos = np.frombuffer(body, "<u4", n_esc, o)
        o += pos.nbytes
        vals = np.frombuffer(body, "<i2", n_esc, o)
        o += vals.nbytes
        z = np.frombuffer(body, np.uint8, rows * f, o)
        if o + z.nbytes != len(body):
            raise ValueError(f"q32 chunk body holds {len(body)} bytes, expected {o + z.nbytes}")
        r = out[:rows]
        r[...] = (z.view(np.int8) if self.residuals == "int8" else _zigzag_decode(z)).reshape(rows, f)
        r.reshape(-1)[pos] = vals
        import torch  # (see _to_float16)

        base = torch.cumsum(torch.from_numpy(deltas.copy()), 0, dtype=torch.int16).numpy()  # (blocks, F)
        full = rows // b  # whole blocks: one broadcast add; a ragged last block: another
        r[: full * b].reshape(full, b, f)[...] += base[:full, None, :]
        if full < blocks:
            r[full * b:] += base[full]
        return out

    def decode(self, data, shape: tuple[int, int]) -> np.ndarray:
        """bytes -> (T, F) float32, exactly steps / steps_per_unit."""
        x = self.decode_steps(data, shape).astype(np.float32)
        x *= np.float32(1 / self.steps_per_unit)
        return x

    def decode_float16(self, data, shape: tuple[int, int]) -> np.ndarray:
        """bytes -> (T, F) float16, exact for |x| <= 2048 / steps_per_unit (64 at 1/32)."""
        return _to_float16(self.decode(data, shape))

    def served(self, x: np.ndarray) -> np.ndarray:
        """What a reader will serve for x (float16), without encoding it."""
        return (self.quantize(x).astype(np.float32) / self.steps_per_unit).astype(np.float16)


class QuantizedLogMelCodec(ArrayBytesCodec):
    """QuantizedLogMel as a zarr v3 array-to-bytes codec (inner chunk = one clip (1, T, F))."""

    is_fixed_size = False

    def __init__(self, *, steps_per_unit: int = 32, block_frames=(32, 16, 8), entropy: str = "lz4",
                 residuals: str = "int8") -> None:
        self.fmt = QuantizedLogMel(int(steps_per_unit), tuple(block_frames), str(entropy), str(residuals))

    def __eq__(self, other) -> bool:
        return isinstance(other, QuantizedLogMelCodec) and self.fmt == other.fmt

    def __hash__(self) -> int:
        return hash(self.fmt)

    def __repr__(self) -> str:
        return f"QuantizedLogMelCodec({self.fmt})"

    @classmethod
    def from_dict(cls, data: dict) -> "QuantizedLogMelCodec":
        _, cfg = parse_named_configuration(data, ZARR_NAME)
        # a store written before the int8 layout (format version 2) has no `residuals` key:
        # its bytes are zigzag, and reading them as int8 would serve wrong values silently
        return cls(**{"residuals": "zigzag", **cfg})

    def to_dict(self) -> dict:
        f = self.fmt
        return {"name": ZARR_NAME, "configuration": {
            "steps_per_unit": f.steps_per_unit, "block_frames": list(f.block_frames), "entropy": f.entropy,
            "residuals": f.residuals}}

    def _decode_sync(self, chunk_bytes: "Buffer", chunk_spec: "ArraySpec") -> "NDBuffer":
        shape = chunk_spec.shape
        x = self.fmt.decode(chunk_bytes.to_bytes(), (shape[-2], shape[-1])).reshape(shape)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(x.astype(chunk_spec.dtype.to_native_dtype(), copy=False))

    async def _decode_single(self, chunk_bytes, chunk_spec):
        return self._decode_sync(chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_array: "NDBuffer", chunk_spec: "ArraySpec") -> "Buffer":
        x = np.asarray(chunk_array.as_ndarray_like())
        data = self.fmt.encode(x.reshape(x.shape[-2], x.shape[-1]))
        return chunk_spec.prototype.buffer.from_bytes(data)

    async def _encode_single(self, chunk_array, chunk_spec):
        return self._encode_sync(chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: "ArraySpec") -> int:
        raise NotImplementedError  # variable: depends on the data (as any compressor)


register_codec(ZARR_NAME, QuantizedLogMelCodec)


@dataclass(frozen=True)
class FeatureCodec:
    """One `--codec` choice: what zarr writes for a clip, and what a reader serves."""

    name: str
    help: str
    lossless: bool
    dtype: str  # the zarr array's dtype: float16, or float32 where the codec quantises itself
    quantized: QuantizedLogMel | None = None
    # the store format version that introduced this codec's current bytes: an older c2f refuses
    # a store of a newer version by name (float16 1; float16-zstd 2; q32 3, since the int8
    # residuals and the raw flag: a q32 store of version 2 holds zigzag bytes, still read)
    format_version: int = 1

    def inner_codecs(self) -> dict:
        """create_array keywords for the inner chunks (one clip) of the sharded features array;
        a crc32c of every clip's stored bytes always comes last."""
        if self.quantized is not None:
            f = self.quantized
            return {"serializer": QuantizedLogMelCodec(steps_per_unit=f.steps_per_unit, block_frames=f.block_frames,
                                                       entropy=f.entropy, residuals=f.residuals),
                    "compressors": [Crc32cCodec()]}
        if self.name == "float16-zstd":
            return {"compressors": [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=2),
                                    Crc32cCodec()]}
        return {"compressors": [Crc32cCodec()]}

    def stored(self, x: np.ndarray) -> np.ndarray:
        """Features as handed to zarr: float16, or float32 for a codec that quantises them."""
        return np.asarray(x, dtype=self.dtype)

    def served(self, x: np.ndarray) -> np.ndarray:
        """float16 values a reader will serve for features x (statistics are computed on these)."""
        return self.quantized.served(x) if self.quantized is not None else np.asarray(x, np.float16)


_Q32 = QuantizedLogMel(steps_per_unit=32)
CODECS: dict[str, FeatureCodec] = {c.name: c for c in (
    FeatureCodec("float16", "raw float16 (default; fastest reads, largest)", True, "float16"),
    FeatureCodec("float16-zstd", "float16, byte-shuffle + zstd: lossless, ~81% of float16 on noisy "
                 "clips, less on sparse ones", True, "float16", format_version=2),
    FeatureCodec("q32-lz4", "log-mel rounded to 1/32 (max error 1/64, as lhotse's lilcom): ~52% of "
                 "float16 on noisy clips, ~49% on the demo; fast reads", False, "float32", _Q32, format_version=3),
    FeatureCodec("q32-zstd", "as q32-lz4 with zstd: ~44% of float16 on noisy clips, ~40% on the demo; half the read speed",
                 False, "float32", replace(_Q32, entropy="zstd"), format_version=3),
)}
DEFAULT_CODEC = "float16"


def get_codec(name: str | None) -> FeatureCodec:
    """The codec of that name; a store without a `codec` attribute (format version 1) is float16."""
    name = name or DEFAULT_CODEC
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}; choose one of {', '.join(CODECS)} (docs/STORE.md compares them)")
    return CODECS[name]


_BYTES = {"name": "bytes", "configuration": {"endian": "little"}}


def clip_decoder(inner: list[dict], dtype: str, clip_shape: tuple[int, ...]) -> Callable | None:
    """For an inner chunk codec list (from zarr.json, crc32c removed): a function payload bytes
    -> clip array for the direct shard reader; None for raw bytes (read straight into an array);
    raises KeyError for a chain it does not know (the caller falls back to zarr)."""
    if inner == [_BYTES]:
        return None
    if len(inner) == 2 and inner[0] == _BYTES and inner[1]["name"] == "blosc":
        return lambda payload: np.frombuffer(_blosc.decompress(payload), dtype).reshape(clip_shape)
    if len(inner) == 1 and inner[0]["name"] == ZARR_NAME and len(clip_shape) == 2:
        fmt = QuantizedLogMelCodec.from_dict(inner[0]).fmt
        return lambda payload: fmt.decode_float16(payload, clip_shape)
    raise KeyError(f"no direct decoder for {inner}")
