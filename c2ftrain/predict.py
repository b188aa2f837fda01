"""Scores of a trained model for audio files: `c2ftrain predict final.pt clip.wav clips/ ...`.

Each file is turned into features as the model's training store made them (c2fdata.features:
mono, resampled to the store's rate, Kaldi fbank with the store's settings, recorded in the
checkpoint), normalised as in training, and scored at full resolution. A file longer than the
model's clip length is scored in consecutive windows of that length, the last one ending at the
file's end, and the window scores are averaged (c2ftrain.windows); a shorter file is
zero-padded at the end, as the store pads.
A file that cannot be read is reported and the others are still scored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from c2fdata.datasets.base import AUDIO_EXTENSIONS, UNDECODABLE_EXTENSIONS, FileSource
from c2fdata.features import BadClip, fbank
from c2fdata.pipeline.torch_loader import normalize
from c2ftrain.evaluate import (
    class_scores,
    find_checkpoint,
    load_trained_model,
    to_full_resolution,
    trained_store,
)
from c2ftrain.inputs import ModelInputs, checkpoint_inputs
from c2ftrain.model import AST
from c2ftrain.windows import windows


@dataclass
class Prediction:
    path: str
    seconds: float = 0.0  # audio length
    windows: int = 0  # clip-length windows scored (their scores averaged)
    scores: np.ndarray | None = None  # (K,) float32: sigmoid (multi-label) or softmax, per class
    error: str = ""  # why the file was not scored ("" when it was)

    def top(self, vocabulary, k: int) -> list[dict]:
        """The k best classes: index, id, name, score."""
        order = np.argsort(-self.scores, kind="stable")[:k]
        return [{"index": int(i), "id": vocabulary.ids[i], "name": vocabulary.names[i],
                 "score": float(self.scores[i])} for i in order]


def audio_files(paths: list[Path]) -> list[Path]:
    """The files given, with each folder replaced by the audio files under it as a build finds
    them (sorted; hidden files skipped, symlinked folders followed), files in formats c2f cannot
    decode (.m4a, ...) included so that each is reported; a ValueError naming a path that does
    not exist or a folder without audio."""
    from c2fdata.datasets.base import audio_files as scan_folder

    out = []
    for p in map(Path, paths):
        if p.is_dir():
            scan = scan_folder(p)
            if not scan.files and not scan.undecodable:
                raise ValueError(f"{p}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) under this folder")
            out.extend(sorted(scan.files + scan.undecodable))
        elif p.is_file():
            out.append(p)
        else:
            raise ValueError(f"{p}: no such file or folder")
    return out


def load_predictor(checkpoint: Path, store: Path | str | None = None) -> tuple[AST, ModelInputs]:
    """The model at full resolution and what it must be fed, as the checkpoint recorded it (a
    ValueError if `store` is given and makes other features or has other classes). A checkpoint
    saved before checkpoints recorded their inputs takes them from `store`, by default the
    training store it names: its classes and fbank settings, its statistics (the recipe's
    normalisation where the checkpoint holds the recipe, as checkpoints/last.pt does)."""
    from c2fdata.reader import StoreReader

    model, state = load_trained_model(find_checkpoint(checkpoint))
    if "inputs" in state and store is None:  # all it needs: no store to read
        inputs = ModelInputs.from_dict(state["inputs"])
    else:
        recorded = "inputs" in state
        store = store or trained_store(state)  # final.pt has always named the store it was trained on
        if store is None:
            raise ValueError(f"{checkpoint} was saved before checkpoints recorded their model's feature settings, "
                             "classes and normalisation: give the store it was trained on with --store")
        try:
            reader = StoreReader(store, train_split_of(store))
        except (ValueError, FileNotFoundError) as err:  # StoreFormatError is a ValueError
            if recorded:
                raise
            raise ValueError(f"{checkpoint} was saved before checkpoints recorded their model's inputs, and its "
                             f"training store {store} cannot be read ({err}): give it with --store") from None
        inputs = checkpoint_inputs(state, model.cfg, reader, checkpoint, store)
    return to_full_resolution(model, state, inputs.target_frames).eval(), inputs


def train_split_of(store) -> str:
    """The split a store's statistics come from (any split would do: the attributes are the store's)."""
    from c2fdata.store import open_store

    return open_store(store).attrs["train_split"]


@torch.no_grad()
def predict_file(model: AST, inputs: ModelInputs, path: Path, device: torch.device,
                 batch_size: int = 16) -> Prediction:
    """One file's scores, averaged over its windows; a Prediction with `error` set for a file that
    cannot be read or is too short for one analysis window (never an exception for bad audio)."""
    if Path(path).suffix.lower() in UNDECODABLE_EXTENSIONS:
        return Prediction(str(path), error=f"format c2f cannot decode ({Path(path).suffix}): convert it, e.g. "
                                           f"`ffmpeg -i {Path(path).name} -ac 1 -ar 16000 {Path(path).stem}.flac`")
    try:
        audio, sr = FileSource(str(path))()
        feats = fbank(audio, sr, inputs.features, source=str(path))  # (frames, n_mels) float32
    except BadClip as err:
        return Prediction(str(path), error=f"{err.reason}: {err.detail}")
    except Exception as err:  # noqa: BLE001  (a decoder bug on one file must not lose the others' scores)
        return Prediction(str(path), error=f"error: {type(err).__name__}: {err}")
    seconds = float(np.shape(audio)[0]) / sr
    window = inputs.target_frames
    clips = normalize(windows(feats, window), inputs.norm_mean, inputs.norm_std)
    scores = [class_scores(model, batch.to(device), inputs.multi_label, device) for batch in clips.split(batch_size)]
    return Prediction(str(path), seconds, len(clips), torch.cat(scores).mean(0).cpu().numpy())


def predict_files(checkpoint: Path, paths: list[Path], *, store: Path | str | None = None, device: str | None = None,
                  progress: Callable[[int, int], None] | None = None) -> tuple[list[Prediction], ModelInputs]:
    """Every file's Prediction (in order; folders expanded) and the model's inputs (its classes);
    `progress(done, total)` after each file. Paths are all checked before the model is loaded."""
    files = audio_files(paths)
    model, inputs = load_predictor(checkpoint, store)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev)
    out = []
    for f in files:
        out.append(predict_file(model, inputs, f, dev))
        if progress:
            progress(len(out), len(files))
    return out, inputs
