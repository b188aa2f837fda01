"""torch on one thread for a block of work, the caller's thread count restored after it.

Two reasons to want it: fbank's float sums depend on the thread count (a store's bits must not
depend on --workers), and a loader worker decodes one clip at a time, where waking torch's
thread pool costs more than the work (DataLoader sets one thread in its workers too).
"""

from __future__ import annotations

from contextlib import contextmanager

__all__ = ["one_torch_thread"]


@contextmanager
def one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
