"""Store -> batches, compressed in time at load time; one entry point, two backends.

    loader = make_loader(PipelineConfig(store, "train", method="pool-avg", factor=4, shuffle=True))
    for epoch in range(epochs):
        loader.set_epoch(epoch)          # optional: epochs advance by themselves after a full pass
        for batch in loader:             # dict(features (B, T/C, F) float32, labels, index)
            ...
    loader.set_phase("none", 1)          # next phase: no store re-open, no re-scan

Both backends serve the same batches (same clips, order, crops, offsets and masks) for the same
config and seed: `BatchSource` (sampling.py) decides every choice; the backends only compute.
"""

from __future__ import annotations

from c2fdata.pipeline.config import PipelineConfig
from c2fdata.pipeline.loader import OUTPUTS, Loader, dali_available, resolve_backend
from c2fdata.pipeline.sampling import EpochPlan, balanced_weights
from c2fdata.pipeline.splits import SplitsReader, open_reader

__all__ = [
    "PipelineConfig", "Loader", "make_loader", "resolve_backend", "dali_available", "balanced_weights",
    "EpochPlan", "OUTPUTS", "SplitsReader", "open_reader",
]


def make_loader(cfg: PipelineConfig, reader=None) -> Loader:
    """The loader for cfg on its backend (see `resolve_backend`).

    reader: an open reader of cfg's store and split(s) (`open_reader`), to share one scan between
    loaders.
    """
    backend = resolve_backend(cfg)
    if backend == "dali":
        if not dali_available():
            raise ImportError(
                "backend='dali' but nvidia.dali does not import; install nvidia-dali-cuda130 "
                "(Linux only) or use backend='torch'"
            )
        from c2fdata.pipeline.dali import DaliLoader

        return DaliLoader(cfg, reader)
    from c2fdata.pipeline.torch_loader import TorchLoader

    return TorchLoader(cfg, reader)
