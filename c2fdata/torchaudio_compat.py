"""The one place that imports torchaudio.

c2f needs two pure-Python pieces of torchaudio: `compliance.kaldi.fbank` (AST's features) and
`functional.resample`. The torchaudio wheels on PyPI are CUDA builds; next to a CPU build of torch
(our CPU machines, CI) `import torchaudio` fails while loading its compiled extension
(`libc10_cuda.so: cannot open shared object file`). Nothing we use needs that extension, so when
and only when that load fails we import torchaudio with its extension marked unavailable, exactly
as torchaudio itself does when it is installed without the compiled library (the `pex` case its
`_extension/utils.py` documents). Every other import error propagates.

Use `kaldi_fbank()` and `resample()` from here; never `import torchaudio` elsewhere.
"""

from __future__ import annotations

import functools
import logging
import sys
import types

import torch

log = logging.getLogger(__name__)

__all__ = ["torchaudio", "kaldi_fbank", "resample", "extension_loaded"]


def _no_extension_module() -> types.ModuleType:
    """What `torchaudio._extension` looks like when torchaudio ships without compiled code."""
    mod = types.ModuleType("torchaudio._extension")
    mod._IS_TORCHAUDIO_EXT_AVAILABLE = False
    mod._IS_ALIGN_AVAILABLE = False

    def fail_if_no_align(func):
        @functools.wraps(func)
        def unavailable(*args, **kwargs):
            raise RuntimeError(
                f"torchaudio.{func.__name__} needs torchaudio's compiled extension, which does not "
                "load next to this torch build; c2f does not use it."
            )

        return unavailable

    mod.fail_if_no_align = fail_if_no_align
    mod._load_lib = lambda lib: False
    mod._check_cuda_version = lambda: None
    return mod


@functools.cache
def _import() -> tuple[types.ModuleType, bool]:
    try:
        import torchaudio as ta

        return ta, True
    except OSError as err:
        # A CUDA torchaudio next to a CPU torch, or any other ABI mismatch of the extension.
        log.debug("torchaudio's compiled extension did not load (%s); using its Python parts", err)
    for name in [m for m in sys.modules if m == "torchaudio" or m.startswith("torchaudio.")]:
        del sys.modules[name]  # drop the half-imported package before importing it again
    sys.modules["torchaudio._extension"] = _no_extension_module()
    import torchaudio as ta

    return ta, False


def extension_loaded() -> bool:
    """Whether torchaudio's compiled extension loaded (False on CPU torch + CUDA torchaudio)."""
    return _import()[1]


def __getattr__(name: str):
    if name == "torchaudio":
        return _import()[0]
    raise AttributeError(name)


def kaldi_fbank(waveform: torch.Tensor, **kwargs) -> torch.Tensor:
    """`torchaudio.compliance.kaldi.fbank`: waveform (1, samples) -> (frames, mel bins)."""
    return _import()[0].compliance.kaldi.fbank(waveform, **kwargs)


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """`torchaudio.functional.resample` (windowed-sinc, torchaudio's defaults)."""
    return _import()[0].functional.resample(waveform, orig_freq, new_freq)
