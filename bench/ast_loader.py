"""The reference point c2f is measured against: AST's data loading, as its dataloader does it.

Per sample, every epoch: decode the audio file, resample to 16 kHz when needed, remove the mean,
Kaldi fbank, pad/crop to the target length, normalise (x - mean) / (2 std); in DataLoader worker
processes. (AST's own code also mixes up and masks here; those costs are the same for every
loader and left out of all of them in the benchmarks.)
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from c2fdata.features import FbankConfig, fbank, pad_or_crop


class ASTStyleDataset(Dataset):
    def __init__(self, files: list[str], labels: list[int], target_frames: int, mean: float, std: float):
        self.files, self.labels = files, labels
        self.target_frames, self.mean, self.std = target_frames, mean, std
        self.cfg = FbankConfig()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import soundfile as sf

        audio, sr = sf.read(self.files[i], dtype="float32")
        feats = fbank(audio, sr, self.cfg, source=self.files[i])  # (T, 128)
        feats, _ = pad_or_crop(feats, self.target_frames)
        feats = (feats - self.mean) / (2 * self.std)
        return feats, self.labels[i]


def _init_worker(_):
    torch.set_num_threads(1)


def ast_style_loader(files, labels, target_frames, mean, std, batch_size=64, workers=2, shuffle=True, seed=0):
    ds = ASTStyleDataset(list(files), list(labels), target_frames, mean, std)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=workers, generator=g,
                      worker_init_fn=_init_worker, persistent_workers=workers > 0, drop_last=False)


def files_of_folder_store(root, ids: list[str], split: str) -> list[str]:
    """Audio paths of a `folder` dataset's clips (ids are '<class>/<stem>'), in store order."""
    from pathlib import Path

    from c2fdata.datasets.base import AUDIO_EXTENSIONS

    out = []
    for clip_id in ids:
        base = Path(root) / split / clip_id
        hit = next((base.with_suffix(e) for e in AUDIO_EXTENSIONS if base.with_suffix(e).is_file()), None)
        if hit is None:
            raise FileNotFoundError(f"no audio for clip {clip_id} under {root}/{split}")
        out.append(str(hit))
    return out


__all__ = ["ASTStyleDataset", "ast_style_loader", "files_of_folder_store"]
