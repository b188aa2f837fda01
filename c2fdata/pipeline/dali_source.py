"""What DALI's reader processes run: the batch source of `fn.external_source` and the shared
pass state it reads. Kept apart from dali.py, and free of torch and of DALI's own modules: on a
GPU the reader processes are spawned, and each one imports whatever unpickling its source needs.
Importing torch there cost about 2 s per process (a CUDA build more), on every pipeline build."""

from __future__ import annotations

import os
import struct
import sys
import weakref
from multiprocessing import shared_memory

import numpy as np

from c2fdata.pipeline.sampling import BatchSource

__all__ = ["DaliSource", "PassState"]


class PassState:
    """The pass a pipeline serves, (epoch, first batch), in 16 bytes of shared memory.

    The loader writes it in the main process before a pass starts; the source reads it at every
    call, in whichever process runs it: forked reader processes inherit the mapping, spawned ones
    attach to it by name when the source is unpickled (a multiprocessing.Value would not pickle
    there: DALI pickles its sources before starting the processes). DALI's own epoch counter only
    counts up, so it cannot say that an evaluation wants epoch 0 again.
    """

    _FORMAT = "qq"  # epoch, start: int64 each

    def __init__(self, name: str | None = None):
        size = struct.calcsize(self._FORMAT)
        self._shm = shared_memory.SharedMemory(name=name, create=name is None, size=size)
        # on close() or garbage collection: unmap; the creating process also removes the segment
        # (readers only ever map it; a forked reader inherits this finaliser but not the pid)
        self._release = weakref.finalize(self, _release, self._shm, os.getpid() if name is None else None)

    def __reduce__(self):
        return PassState, (self._shm.name,)  # attach, never create, in the unpickling process

    def set(self, epoch: int, start: int) -> None:
        struct.pack_into(self._FORMAT, self._shm.buf, 0, int(epoch), int(start))

    def get(self) -> tuple[int, int]:
        return struct.unpack_from(self._FORMAT, self._shm.buf, 0)

    def close(self) -> None:
        self._release()


def _release(shm: shared_memory.SharedMemory, owner_pid: int | None) -> None:
    shm.close()
    if owner_pid == os.getpid():
        shm.unlink()


def dense(samples: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """A batch's samples as one array whose first axis is the batch, where they share a shape and
    dtype (else the list as it is). DALI's parallel source carries a list over sample by sample,
    unpacked and fed one by one in the training process's main thread, between two train steps;
    one array goes over as one buffer (bench handover on the CPU: 14% less of that thread's time
    per batch on average, AST base's batch of 12)."""
    if samples and len({(s.shape, s.dtype) for s in samples}) == 1:
        return np.stack(samples)
    return samples


class DaliSource(BatchSource):
    """Batch-mode callable for `fn.external_source(parallel=True, batch=True, batch_info=True)`.

    Batch mode (not sample mode) because DALI drops a partial last batch in sample mode; here
    the last batch of an epoch is simply shorter. Which epoch, and from which batch, is read
    from `passes` at every call (DALI's `info.iteration` counts from 0 in every pass): batches
    DALI requests for a pass start only once the loader has set it (see DaliLoader._pipeline).
    """

    def __init__(self, reader, plan, cfg, passes: PassState):
        super().__init__(reader, plan, cfg)
        self.passes = passes
        self._pid = os.getpid()  # the process that built the pipeline; reader processes differ

    def _in_reader_process(self) -> None:
        """In a DALI reader process, torch on one thread, as DataLoader sets in its workers: a
        reader decodes one clip at a time, and waking torch's thread pool for each clip-sized
        cast (q32 stores) costs more than the cast, on a machine whose cores are all busy.
        torch is imported here only if a codec needs it (c2fdata/codec.py imports it lazily):
        a forked reader has it already; a spawned one reads OMP_NUM_THREADS when it imports it."""
        if self._pid != os.getpid():
            os.environ["OMP_NUM_THREADS"] = "1"
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(1)
            self._pid = os.getpid()

    @property
    def outputs(self) -> tuple[str, ...]:
        """Names of what __call__ returns: only what this phase's graph uses."""
        cfg = self.cfg
        names = ("stored", "labels", "index")
        if cfg.random_crop or self.reader.target_frames != cfg.target_frames:
            names += ("crop_start",)
        if cfg.random_offset and cfg.method == "fshift" and cfg.factor > 1:  # at C = 1 the offset is 0
            names += ("offset",)
        if cfg.time_mask_frames or cfg.freq_mask_bins:
            names += ("mask_anchor", "mask_shape")
        return names

    def __call__(self, info):
        self._in_reader_process()
        epoch, start = self.passes.get()
        iteration = info.iteration + start
        if iteration >= len(self.plan):
            raise StopIteration
        batch = self.read(epoch, iteration)
        p = batch.params
        n = len(batch.index)
        out = {  # per output, a list of samples or one array whose first axis is the batch
            "stored": dense(batch.features),  # B x (T_store, F) float16
            "labels": dense(batch.labels),
            "index": batch.index,  # (B,) int64
            "crop_start": p.crop_start.astype(np.int32)[:, None],  # (B, 1)
            "offset": p.offset.astype(np.int32)[:, None],  # (B, 1)
        }
        if "mask_anchor" in self.outputs:
            zeros = np.zeros(n)
            frames, bins = np.full(n, self.cfg.out_frames), np.full(n, self.n_mels)
            out["mask_anchor"] = np.stack([p.time_start, zeros, zeros, p.freq_start], 1).astype(np.float32)
            out["mask_shape"] = np.stack([p.time_width, bins, frames, p.freq_width], 1).astype(np.float32)
        return tuple(out[name] for name in self.outputs)
