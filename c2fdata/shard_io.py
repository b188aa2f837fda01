"""Direct reads of one clip from a sharded, uncompressed Zarr v3 array (the store's features).

zarr-python's general read path costs ~1 ms per call in Python/async overhead, which caps random
single-clip reads at ~900/s per process with sharding. Our features array uses one fixed,
simple layout (sharding_indexed, inner chunk = one clip, raw little-endian bytes, index at the
end protected by crc32c; Zarr v3 spec, "sharding_indexed" codec). For exactly that layout a clip
is one `pread` at an offset the shard's index gives, so this module reads it directly, and
anything else (another codec, compression, a layout from a newer zarr) falls back to zarr.
Tests hold both paths equal clip for clip.

Every read checks the clip's crc32c (~9 us for a 256 KiB clip, see docs/STORE.md): a clip that
fails it, or whose shard index fails its own, raises `CorruptClipError`, never returns data.
"""

from __future__ import annotations

import json
import os
import struct
from collections import OrderedDict
from pathlib import Path

import google_crc32c  # a dependency of zarr's crc32c codec; its C (SSE4.2) implementation
import numpy as np

__all__ = ["CorruptClipError", "ShardedClipReader"]

_MISSING = 2**64 - 1  # offset/nbytes of an empty inner chunk (spec)
_BYTES = {"name": "bytes", "configuration": {"endian": "little"}}
_CRC = {"name": "crc32c"}


def _layout(meta: dict) -> tuple[int, tuple[int, ...], str, bool] | None:
    """(clips per shard, clip shape, numpy dtype, per-clip crc32c) for the simple layout, else None."""
    try:
        (codec,) = meta["codecs"]
        cfg = codec["configuration"]
        if codec["name"] != "sharding_indexed" or cfg["index_location"] != "end":
            return None
        if cfg["codecs"] not in ([_BYTES], [_BYTES, _CRC]):
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
        dtype = {"float16": "<f2", "float32": "<f4"}[meta["data_type"]]
        return int(shard[0]), tuple(int(s) for s in shape[1:]), dtype, len(cfg["codecs"]) == 2
    except (KeyError, ValueError, TypeError):
        return None


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
    opening; one per process (the StoreReader makes one lazily in each worker)."""

    def __init__(self, array_dir: str | Path, fill_value: float = 0.0, max_open_files: int = 64):
        self.dir = Path(array_dir)
        meta = json.loads((self.dir / "zarr.json").read_text())
        layout = _layout(meta)
        if layout is None:
            raise ValueError(f"{self.dir}: not the simple sharded layout")
        self.per_shard, self.clip_shape, self.dtype, self.has_crc = layout
        self.n = int(meta["shape"][0])
        self.fill_value = fill_value
        self.clip_bytes = int(np.prod(self.clip_shape)) * np.dtype(self.dtype).itemsize
        self._fds: OrderedDict[int, tuple[int, np.ndarray | None]] = OrderedDict()
        self._max_open = max_open_files

    @staticmethod
    def supports(array_dir: str | Path) -> bool:
        try:
            return _layout(json.loads((Path(array_dir) / "zarr.json").read_text())) is not None
        except (OSError, ValueError):
            return False

    def _shard(self, s: int, i: int) -> tuple[int, np.ndarray | None]:
        hit = self._fds.get(s)
        if hit is not None:
            self._fds.move_to_end(s)
            return hit
        path = self.dir / "c" / str(s) / "0" / "0"
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return -1, None  # shard never written: every clip in it is the fill value
        rows = min(self.per_shard, self.n - s * self.per_shard)
        index_bytes = 16 * self.per_shard + 4
        size = os.fstat(fd).st_size
        raw = os.pread(fd, index_bytes, max(size - index_bytes, 0))
        body = raw[:-4]
        if len(raw) != index_bytes or _crc32c(body) != struct.unpack("<I", raw[-4:])[0]:
            os.close(fd)
            raise CorruptClipError(
                f"{path}: shard index checksum mismatch (corrupt, truncated or half-written file): "
                f"clip {i} and the other clips of this shard cannot be located", row=i)
        index = np.frombuffer(body, "<u8").reshape(self.per_shard, 2)[:rows]
        if len(self._fds) >= self._max_open:
            _, (old_fd, _) = self._fds.popitem(last=False)
            os.close(old_fd)
        self._fds[s] = (fd, index)
        return fd, index

    def read(self, i: int, check: bool = True) -> np.ndarray:
        """Row i, its crc32c checked (CorruptClipError on a mismatch). check=False skips the
        checksum (benchmarks only: nothing else should serve unchecked data)."""
        if not 0 <= i < self.n:
            raise IndexError(i)
        s, j = divmod(int(i), self.per_shard)
        fd, index = self._shard(s, int(i))
        if index is None or index[j, 0] == _MISSING:
            return np.full(self.clip_shape, self.fill_value, self.dtype)
        offset, nbytes = int(index[j, 0]), int(index[j, 1])
        if nbytes != self.clip_bytes + 4 * self.has_crc:
            raise CorruptClipError(f"{self.dir}: clip {i} holds {nbytes} bytes, expected "
                                   f"{self.clip_bytes + 4 * self.has_crc} (corrupt shard index)", row=int(i))
        out = np.empty(self.clip_shape, self.dtype)  # writable, read into in place
        crc = bytearray(4 * self.has_crc)
        got = os.preadv(fd, [memoryview(out).cast("B"), crc], offset)
        if got != nbytes:
            raise CorruptClipError(f"{self.dir}: clip {i} truncated ({got} of {nbytes} bytes)", row=int(i))
        # the array itself, not out.tobytes(): google_crc32c takes bytes or a numpy array (not a
        # memoryview or bytearray), and the copy would add ~5 us to the check's ~9 us
        if check and self.has_crc and _crc32c(out) != struct.unpack("<I", crc)[0]:
            raise CorruptClipError(f"{self.dir}: clip {i} fails its crc32c checksum (corrupt data)", row=int(i))
        return out

    def close(self) -> None:
        for fd, _ in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


_crc32c = google_crc32c.value  # bytes or C-contiguous numpy array -> int
