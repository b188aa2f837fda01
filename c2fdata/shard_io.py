"""Direct reads of one clip from a sharded Zarr v3 array (the store's features), any codec.

zarr-python's general read path costs ~1 ms per call in Python/async overhead, which caps random
single-clip reads at ~900/s per process with sharding. Our features array uses one fixed,
simple layout (sharding_indexed, inner chunk = one clip, index at the end protected by crc32c;
Zarr v3 spec, "sharding_indexed" codec; the clip's own codecs from codec.py, then a crc32c).
For exactly that layout a clip is one ranged read at an offset the shard's index gives, so this
module reads it directly (raw float16 straight into the output array; other codecs through
codec.clip_decoder), and anything else (a layout from a newer zarr) falls back to zarr. Tests
hold both paths equal clip for clip, for every codec.

Shards are local files (os.pread) or objects in an fsspec filesystem (ranged GETs: the index
with one suffix request per shard opened, then one request per clip), see storage.py.

Every read checks the clip's crc32c (~9 us for a 256 KiB clip, see docs/STORE.md): a clip that
fails it, whose shard index fails its own, or whose shard file is missing, raises
`CorruptClipError`, never returns data.
"""

from __future__ import annotations

import json
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import google_crc32c  # a dependency of zarr's crc32c codec; its C (SSE4.2) implementation
import numpy as np

from c2fdata.codec import clip_decoder
from c2fdata.storage import Location, as_location

__all__ = ["CorruptClipError", "ShardedClipReader"]

_MISSING = 2**64 - 1  # offset/nbytes of an empty inner chunk (spec)
_CRC = {"name": "crc32c"}
_DTYPES = {"float16": "<f2", "float32": "<f4"}


@dataclass(frozen=True)
class _Layout:
    per_shard: int  # clips per shard
    clip_shape: tuple[int, ...]
    dtype: str  # numpy dtype of the stored array
    has_crc: bool  # a crc32c after each clip's bytes
    decode: Callable | None  # payload -> clip; None: raw little-endian bytes of `dtype`


def _layout(meta: dict) -> _Layout | None:
    """The simple sharded layout of a features array, else None (read it through zarr)."""
    try:
        (codec,) = meta["codecs"]
        cfg = codec["configuration"]
        if codec["name"] != "sharding_indexed" or cfg["index_location"] != "end":
            return None
        if [c["name"] for c in cfg["index_codecs"]] != ["bytes", "crc32c"]:
            return None
        if cfg["index_codecs"][0]["configuration"]["endian"] != "little":
            return None
        if meta["chunk_key_encoding"] != {"name": "default", "configuration": {"separator": "/"}}:
            return None
        shard = meta["chunk_grid"]["configuration"]["chunk_shape"]
        inner = cfg["chunk_shape"]
        shape = meta["shape"]
        if inner[0] != 1 or list(inner[1:]) != list(shape[1:]) or list(shard[1:]) != list(shape[1:]):
            return None
        codecs = list(cfg["codecs"])
        has_crc = codecs[-1:] == [_CRC]
        clip_shape = tuple(int(s) for s in shape[1:])
        dtype = _DTYPES[meta["data_type"]]
        decode = clip_decoder(codecs[:-1] if has_crc else codecs, dtype, clip_shape)
        return _Layout(int(shard[0]), clip_shape, dtype, has_crc, decode)
    except (KeyError, ValueError, TypeError):
        return None


class _LocalShard:
    """A local shard file, read with pread."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDONLY)  # FileNotFoundError: the caller says what it means

    def tail(self, n: int) -> bytes:
        return os.pread(self.fd, n, max(os.fstat(self.fd).st_size - n, 0))

    def read(self, offset: int, n: int) -> bytes:
        return os.pread(self.fd, n, offset)

    def readv(self, buffers: list, offset: int) -> int:
        return os.preadv(self.fd, buffers, offset)

    def close(self) -> None:
        os.close(self.fd)


class _RemoteShard:
    """A shard object in an fsspec filesystem, read with ranged requests."""

    def __init__(self, fs, path: str):
        self.fs, self.path = fs, path

    def tail(self, n: int) -> bytes:
        return self.fs.cat_file(self.path, start=-n)  # one suffix-range GET; FileNotFoundError if absent

    def read(self, offset: int, n: int) -> bytes:
        return self.fs.cat_file(self.path, start=offset, end=offset + n)

    def readv(self, buffers: list, offset: int) -> int:
        data = self.read(offset, sum(len(memoryview(b).cast("B")) for b in buffers))
        at = 0
        for b in buffers:
            view = memoryview(b).cast("B")
            take = data[at: at + len(view)]
            view[: len(take)] = take
            at += len(take)
        return len(data)

    def close(self) -> None:
        pass


class CorruptClipError(ValueError):
    """A clip whose stored bytes fail their checksum, or cannot be located or read in full.

    `path`, `split`, `row` (row in the split's arrays), `clip_id` say which clip, where known
    (the StoreReader fills them in). Constructible from the message alone, and pickles with its
    attributes, so that it crosses DataLoader and DALI worker processes intact.
    """

    def __init__(self, message: str, *, path: str | None = None, split: str | None = None,
                 row: int | None = None, clip_id: str | None = None):
        super().__init__(message)
        self.path, self.split, self.row, self.clip_id = path, split, row, clip_id

    def __reduce__(self):
        return _corrupt_clip_error, (str(self), self.path, self.split, self.row, self.clip_id)


def _corrupt_clip_error(message, path, split, row, clip_id) -> CorruptClipError:
    return CorruptClipError(message, path=path, split=split, row=row, clip_id=clip_id)


class ShardedClipReader:
    """Reads row i of an (N, *clip_shape) array stored as described above. Not thread-safe for
    opening; one per process (the StoreReader makes one lazily in each worker). `array_dir` is a
    local folder or a storage.Location (an fsspec filesystem and a path in it)."""

    def __init__(self, array_dir: str | Path | Location, fill_value: float = 0.0, max_open_files: int = 64):
        self.loc = as_location(array_dir)
        self.dir = self.loc.url
        layout = _layout(json.loads(self.loc.child("zarr.json").read_bytes()))
        if layout is None:
            raise ValueError(f"{self.dir}: not the simple sharded layout")
        meta_shape = json.loads(self.loc.child("zarr.json").read_bytes())["shape"]
        self.layout = layout
        self.per_shard, self.clip_shape, self.dtype, self.has_crc = (
            layout.per_shard, layout.clip_shape, layout.dtype, layout.has_crc)
        self.n = int(meta_shape[0])
        self.fill_value = fill_value
        self.clip_bytes = int(np.prod(self.clip_shape)) * np.dtype(self.dtype).itemsize
        self._open: OrderedDict[int, tuple[_LocalShard | _RemoteShard, np.ndarray]] = OrderedDict()
        # a remote shard holds no descriptor, only its 0.5 KiB index: keep many more of those
        self._max_open = max_open_files if self.loc.fs is None else 64 * max_open_files

    @staticmethod
    def supports(array_dir: str | Path | Location) -> bool:
        try:
            return _layout(json.loads(as_location(array_dir).child("zarr.json").read_bytes())) is not None
        except (OSError, ValueError):
            return False

    def _shard(self, s: int, i: int):
        hit = self._open.get(s)
        if hit is not None:
            self._open.move_to_end(s)
            return hit
        loc = self.loc.child("c", str(s), "0", "0")
        index_bytes = 16 * self.per_shard + 4
        try:
            cached = loc.local_copy()  # the read cache's copy of a remote shard, if one is set
            if loc.fs is None or cached:
                shard = _LocalShard(cached or loc.path)
            else:
                shard = _RemoteShard(loc.fs, loc.path)
            raw = shard.tail(index_bytes)
        except FileNotFoundError:
            # a committed block always has its shard (all-zero clips are written too): a missing
            # one was deleted or never copied, and its clips must not read as zeros
            raise CorruptClipError(
                f"{loc.url}: shard file missing (deleted, or not copied with the store): clip {i} "
                "and the other clips of its block cannot be read", row=i) from None
        rows = min(self.per_shard, self.n - s * self.per_shard)
        body = raw[:-4]
        if len(raw) != index_bytes or _crc32c(body) != struct.unpack("<I", raw[-4:])[0]:
            shard.close()
            raise CorruptClipError(
                f"{loc.url}: shard index checksum mismatch (corrupt, truncated or half-written file): "
                f"clip {i} and the other clips of this shard cannot be located", row=i)
        index = np.frombuffer(body, "<u8").reshape(self.per_shard, 2)[:rows]
        if len(self._open) >= self._max_open:
            _, (old, _) = self._open.popitem(last=False)
            old.close()
        self._open[s] = (shard, index)
        return shard, index

    def read(self, i: int, check: bool = True) -> np.ndarray:
        """Row i, its crc32c checked (CorruptClipError on a mismatch). check=False skips the
        checksum (benchmarks only: nothing else should serve unchecked data)."""
        if not 0 <= i < self.n:
            raise IndexError(i)
        s, j = divmod(int(i), self.per_shard)
        shard, index = self._shard(s, int(i))
        if index[j, 0] == _MISSING:  # zarr's rule for a clip equal to the fill value
            return np.full(self.clip_shape, self.fill_value, self.dtype)
        offset, nbytes = int(index[j, 0]), int(index[j, 1])
        if self.layout.decode is None:
            return self._read_raw(shard, i, offset, nbytes, check)
        if nbytes <= 4 * self.has_crc or nbytes > 4 * self.clip_bytes + 1024:
            raise CorruptClipError(f"{self.dir}: clip {i} holds {nbytes} bytes (corrupt shard index)", row=int(i))
        data = shard.read(offset, nbytes)
        if len(data) != nbytes:
            raise CorruptClipError(f"{self.dir}: clip {i} truncated ({len(data)} of {nbytes} bytes)", row=int(i))
        payload = np.frombuffer(data, np.uint8, nbytes - 4 * self.has_crc)  # a view, no copy
        if check and self.has_crc and _crc32c(payload) != struct.unpack("<I", data[-4:])[0]:
            raise CorruptClipError(f"{self.dir}: clip {i} fails its crc32c checksum (corrupt data)", row=int(i))
        try:
            return self.layout.decode(payload)
        except Exception as err:  # only reachable with check=False or a codec bug: never serve it
            raise CorruptClipError(f"{self.dir}: clip {i} does not decode: {err}", row=int(i)) from err

    def _read_raw(self, shard, i: int, offset: int, nbytes: int, check: bool) -> np.ndarray:
        if nbytes != self.clip_bytes + 4 * self.has_crc:
            raise CorruptClipError(f"{self.dir}: clip {i} holds {nbytes} bytes, expected "
                                   f"{self.clip_bytes + 4 * self.has_crc} (corrupt shard index)", row=int(i))
        out = np.empty(self.clip_shape, self.dtype)  # writable, read into in place
        crc = bytearray(4 * self.has_crc)
        got = shard.readv([memoryview(out).cast("B"), crc], offset)
        if got != nbytes:
            raise CorruptClipError(f"{self.dir}: clip {i} truncated ({got} of {nbytes} bytes)", row=int(i))
        # the array itself, not out.tobytes(): google_crc32c takes bytes or a numpy array (not a
        # memoryview or bytearray), and the copy would add ~5 us to the check's ~9 us
        if check and self.has_crc and _crc32c(out) != struct.unpack("<I", crc)[0]:
            raise CorruptClipError(f"{self.dir}: clip {i} fails its crc32c checksum (corrupt data)", row=int(i))
        return out

    def close(self) -> None:
        for shard, _ in self._open.values():
            shard.close()
        self._open.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


_crc32c = google_crc32c.value  # bytes or C-contiguous numpy array -> int
