"""`c2fdata show`: see what the model sees — one clip at each compression, or the exact array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from c2fdata.compress import compress, compressed_frames
from c2fdata.pipeline.torch_loader import crop_or_pad, normalize
from c2fdata.reader import StoreReader

SHOW_METHODS = ("fshift", "pool-avg", "pool-max")
SHOW_FACTORS = (1, 2, 4)


def served_features(reader: StoreReader, index: int, method: str = "none", factor: int = 1) -> np.ndarray:
    """Clip `index` exactly as the pipeline serves it with augmentation off: crop/pad to the
    store's length -> compress by C (first frame 0) -> (x - mean) / (2 std). (T/C, F) float32."""
    if not 0 <= index < len(reader):
        raise IndexError(f"--index {index} outside 0..{len(reader) - 1} ({reader.split} has {len(reader)} clips)")
    target = reader.target_frames
    compressed_frames(target, method, factor)  # clear error for a factor that leaves no frames
    stored, _, _ = reader[index]
    x = crop_or_pad(torch.from_numpy(np.asarray(stored)), 0, target).float()  # (T, F)
    x = compress(x, method, factor)  # (T/C, F)
    return normalize(x, reader.mean, reader.std).numpy()


def label_text(reader: StoreReader, label) -> str:
    names = reader.vocabulary.names
    if reader.multi_label:
        return ", ".join(names[i] for i in np.flatnonzero(label)) or "(no label)"
    return names[int(label)]


def clip_index(store: str | Path, split: str, clip_id: str) -> int:
    """The index (as the loader numbers a split's served clips) of clip `clip_id`; ValueError
    naming it, and why, when the split serves no such clip."""
    reader = StoreReader(store, split)
    try:
        return reader.ids.index(clip_id)
    except ValueError:
        pass
    similar = [i for i in reader.ids if clip_id in i][:5]
    hint = f"; ids holding it: {', '.join(similar)}" if similar else ""
    raise ValueError(f"{store}: split {split!r} serves no clip {clip_id!r} (a clip that failed its build is not "
                     f"served: `c2fdata info {store} --problems` lists them){hint}")


def show(store: str | Path, split: str, index: int, out: str | Path,
         method: str | None = None, factor: int | None = None) -> Path:
    out = Path(out)
    reader = StoreReader(store, split)
    if out.suffix == ".npy":
        np.save(out, served_features(reader, index, method or "none", factor or 1))
        return out
    if out.suffix != ".png":
        raise ValueError(f"--out must end in .png (a picture) or .npy (the array), got {out.name}")
    methods = [method] if method else list(SHOW_METHODS)
    factors = [factor] if factor else list(SHOW_FACTORS)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(methods), len(factors), figsize=(3.6 * len(factors), 2.6 * len(methods)),
                             squeeze=False)
    _, frames, label = reader[index]
    for r, m in enumerate(methods):
        for c, f in enumerate(factors):
            x = served_features(reader, index, m if f > 1 else "none", f)  # (T/C, F)
            ax = axes[r][c]
            ax.imshow(x.T, origin="lower", aspect="auto", cmap="magma", vmin=-1.5, vmax=1.5,
                      extent=(0, x.shape[0] * f * reader.frame_shift_ms / 1000, 0, x.shape[1]))
            title = "full resolution" if f == 1 else f"{m}, C={f}"
            ax.set_title(f"{title}: {x.shape[0]} x {x.shape[1]}", fontsize=9)
            ax.set_xlabel("time (s)", fontsize=8)
            ax.set_ylabel("mel bin", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle(f"{reader.dataset}/{split}[{index}] {reader.ids[index]}: {label_text(reader, label)} "
                 f"({frames} real frames)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
