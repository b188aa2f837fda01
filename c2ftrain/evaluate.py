"""Evaluation: a model's scores over every clip of a split -> metrics; a saved checkpoint likewise."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from c2fdata.pipeline import PipelineConfig, make_loader
from c2fdata.pipeline.torch_loader import normalize
from c2fdata.reader import StoreReader
from c2fdata.shard_io import CorruptClipError
from c2ftrain.checkpoint import load_checkpoint
from c2ftrain.distributed import Dist, gather_cat
from c2ftrain.inputs import checkpoint_inputs
from c2ftrain.metrics import compute_metrics
from c2ftrain.model import AST, ASTConfig
from c2ftrain.windows import windows

log = logging.getLogger(__name__)


def evaluate_loader(model: AST, loader, multi_label: bool, device: torch.device, d: Dist = Dist(),
                    progress: Callable[[int, int], None] | None = None) -> dict:
    """Metrics of `model` over every clip the loader serves (all ranks together), at the
    resolution the model and loader are set to; `progress(done, total)` after each batch."""
    scores, targets, _ = loader_scores(model, loader, multi_label, device, d, progress)
    return compute_metrics(scores, targets, multi_label)


@torch.no_grad()
def loader_scores(model: AST, loader, multi_label: bool, device: torch.device, d: Dist | None = None,
                  progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, K) float32 scores, the targets ((N, K) multi-hot or (N,) classes) and each row's clip
    index in the split, in clip order, of every clip the loader serves (all ranks together). The
    model is left in the mode it came in (a training model goes on training: with dropout or drop
    path, an evaluation mid-run must not switch them off for the rest of the run)."""
    d = d or Dist()
    was_training = model.training
    model.eval()
    scores, targets, index = [], [], []
    loader.set_epoch(0)
    total = len(loader)
    try:
        for k, batch in enumerate(loader, 1):
            scores.append(class_scores(model, batch["features"].to(device, non_blocking=True), multi_label, device))
            targets.append(batch["labels"])
            index.append(batch["index"])
            if progress:
                progress(k, total)
    finally:
        model.train(was_training)
    s, t = gather_cat(d, torch.cat(scores).cpu()), gather_cat(d, torch.cat(targets).cpu())
    i = gather_cat(d, torch.cat(index).cpu())
    order = torch.argsort(i)  # rank shards interleave; every clip once
    return s[order].numpy(), t[order].numpy(), i[order].numpy()


@torch.no_grad()
def windowed_scores(model: AST, reader: StoreReader, window: int, mean: float, std: float,
                    device: torch.device, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """As loader_scores, but each clip scored over the windows of `window` frames that cover all
    its recorded frames (c2ftrain.windows), their scores averaged, rather than over its first
    `window` frames alone; normalised with (mean, std) as the loaders do. Windows of several
    clips share a batch. Also returns the number of windows scored. A clip that fails its
    checksum is warned about and left out, as the loaders leave it out."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    frames, labels = reader.frames(), reader.labels()
    sums = torch.zeros(len(reader), reader.n_classes)  # float32, as the loader path's scores: a few windows a clip
    counts = torch.zeros(len(reader), dtype=torch.int64)
    xs: list[torch.Tensor] = []  # windows not scored yet, and the clip each belongs to
    of: list[torch.Tensor] = []

    def score(final: bool) -> None:
        """Score the pending windows in batches of batch_size (the remainder too when final)."""
        x, clip = torch.cat(xs), torch.cat(of)
        end = len(x) if final else len(x) - len(x) % batch_size
        for s in range(0, end, batch_size):
            part = clip[s:s + batch_size]
            sums.index_add_(0, part, class_scores(model, x[s:s + batch_size].to(device), reader.multi_label,
                                                  device).cpu())
            counts.index_add_(0, part, torch.ones_like(part))
        xs[:], of[:] = [x[end:]], [clip[end:]]

    try:
        for i in range(len(reader)):
            try:
                feats = reader.features(i)
            except CorruptClipError as err:
                log.warning("corrupt clip skipped: %s", err)
                continue
            xs.append(normalize(windows(torch.from_numpy(feats[: frames[i]]).float(), window), mean, std))
            of.append(torch.full((len(xs[-1]),), i, dtype=torch.int64))
            if sum(map(len, xs)) >= batch_size:
                score(final=False)
        if xs:
            score(final=True)
    finally:
        model.train(was_training)
    kept = torch.nonzero(counts).squeeze(1)
    scores = sums[kept].div_(counts[kept, None])  # one (kept, K) copy, divided in place
    return scores.numpy(), labels[kept.numpy()], kept.numpy(), int(counts.sum())


def class_scores(model: AST, x: torch.Tensor, multi_label: bool, device: torch.device) -> torch.Tensor:
    """(B, K) float32 scores of a batch already on `device`: sigmoid (multi-label) or softmax of
    the logits, the model run under bf16 autocast on CUDA."""
    if device.type != "cuda":
        x = x.float()  # a float16/bfloat16 hand-over meets float32 weights (no autocast on CPU)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(x)
    # scores in float32: a sigmoid of bf16 logits keeps 8 mantissa bits and ties mAP/AUC ranks
    logits = logits.float()
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, -1)


def load_trained_model(path: Path) -> tuple[AST, dict]:
    """The model a checkpoint (final.pt or checkpoints/last.pt) holds, on the CPU, at the
    resolution it was saved at, and the checkpoint itself; a ValueError for another file."""
    state = load_checkpoint(path)
    if "model" not in state or "model_config" not in state:
        raise ValueError(f"{path}: not a c2f checkpoint (no model / model_config)")
    model = AST(ASTConfig.from_dict(state["model_config"]))
    model.set_time_resolution(**state["resolution"])
    model.load_state_dict(state["model"])
    return model, state


def absolute_store(store: str) -> str:
    """A local store's absolute path (a remote one's URL as it is): what checkpoints record beside
    the recipe's store, which may be relative to the directory the run was started in."""
    from c2fdata.storage import is_remote

    return str(store) if is_remote(store) else str(Path(store).absolute())


def trained_store(state: dict) -> str | None:
    """The store a checkpoint was trained on: as the recipe named it where that is the same store
    from here (its fingerprint, where recorded), else its absolute path at training time (a
    relative store seen from another working directory); None for a checkpoint that names none."""
    store, absolute = state.get("store"), state.get("store_absolute")
    if store is None or not absolute or absolute == store:
        return store
    return store if _is_store(store, state.get("store_fingerprint")) or not _is_store(absolute, None) else absolute


def _is_store(path: str, fingerprint: str | None) -> bool:
    """A store at `path`, with `fingerprint` where one is given."""
    from c2fdata.store import open_store

    try:
        attrs = open_store(path).attrs
    except (ValueError, OSError):  # StoreFormatError: nothing, or not a store, there
        return False
    return fingerprint is None or attrs.get("fingerprint") == fingerprint


def find_checkpoint(path: Path) -> Path:
    """The checkpoint a path names: a file as it is; a directory, its final.pt: a training run's
    (RUN/c2f), an experiment's coarse-to-fine run (RUN/c2f/final.pt), or the one seed's of a
    multi-seed experiment; a ValueError saying what to give where there is none or several."""
    path = Path(path)
    if not path.is_dir():
        return path
    for candidate in (path / "final.pt", path / "c2f" / "final.pt"):
        if candidate.is_file():
            return candidate
    seeds = sorted(p for p in path.glob("seed-*") if p.is_dir())
    if len(seeds) > 1:  # one of them finished is not the experiment's model either
        raise ValueError(f"{path} holds {len(seeds)} seeds' runs ({', '.join(p.name for p in seeds)}): give one "
                         f"seed's model, e.g. {seeds[0] / 'c2f' / 'final.pt'}")
    if seeds and (seeds[0] / "c2f" / "final.pt").is_file():
        return seeds[0] / "c2f" / "final.pt"
    latest = next((p for p in (path / "checkpoints" / "last.pt", path / "c2f" / "checkpoints" / "last.pt")
                   if p.is_file()), None)
    if latest:
        raise ValueError(f"{path} has no final.pt (a run not finished?): its latest checkpoint is {latest}; give "
                         "that to use it")
    raise ValueError(f"no checkpoint in {path}: give a final.pt or checkpoints/last.pt, or a run directory "
                     "holding one")


def to_full_resolution(model: AST, state: dict, frames: int) -> AST:
    """The model at `frames` frames and the config's patch: a checkpoint saved in a coarse phase
    (checkpoints/last.pt) is resampled as its recipe resamples (it holds the recipe; final.pt is
    at full resolution already)."""
    spec = state.get("recipe", {}).get("model", {})
    model.set_time_resolution(frames, interpolation=spec.get("interpolation", "bilinear"),
                              antialias=spec.get("antialias", True))
    return model


# What evaluate_checkpoint returns beside the metrics (what was evaluated, and how).
EVALUATED = ("skipped_clips", "checkpoint", "store", "split", "clips", "notes", "scores", "windows")


def evaluate_checkpoint(path: Path, store: Path | str | None = None, split: str | None = None,
                        batch_size: int = 64, device: str | None = None, scores_path: Path | None = None,
                        windowed: bool = False) -> dict:
    """Metrics of a saved checkpoint (final.pt or checkpoints/last.pt) at full resolution on one
    split of a store, fed as the model was trained (its clip length and normalisation, recorded
    in the checkpoint); a ValueError for a store whose features or classes differ from the
    training store's. A checkpoint saved on a GPU loads on a CPU-only machine. skipped_clips:
    clips left out because they failed their checksum (each warned about), as a run counts them;
    checkpoint, store, split and clips: what was evaluated (the defaults resolved: `path` may be a
    run directory, see find_checkpoint); notes: what the figures do not say by themselves.
    scores_path: also write every clip's scores there (write_scores), for metrics of one's own.
    windowed: score each clip over windows of the model's length that cover all its stored frames,
    their scores averaged (windowed_scores), not over its first window alone as training runs
    evaluate; `windows` then says how many were scored."""
    path = find_checkpoint(path)
    model, state = load_trained_model(path)
    if store is None:  # the store it was trained on, which every checkpoint names
        if "store" not in state:
            raise ValueError(f"{path} does not name the store it was trained on: give it with --store")
        store = trained_store(state)
        from c2fdata.storage import as_location

        if not as_location(store).exists():
            raise ValueError(f"{path} was trained on the store {store}, which is not there: give it with --store")
    split = split or state.get("eval_split", "eval")  # the run's evaluation split where it is recorded
    reader = StoreReader(store, split)
    inputs = checkpoint_inputs(state, model.cfg, reader, path, store)
    to_full_resolution(model, state, inputs.target_frames)  # the length it was trained at
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    notes = []
    if failed := reader.failed():
        notes.append(f"{failed} clip(s) of {split} failed in the build and are not scored (`c2fdata info {store} "
                     "--problems` says why)")
    if reader.target_frames < inputs.target_frames:
        notes.append(f"the model takes {inputs.target_frames} frames a clip and {store}'s clips hold at most "
                     f"{reader.target_frames}: every clip was zero-padded by at least "
                     f"{inputs.target_frames - reader.target_frames} frames, unlike the clips it was trained on")
    if not len(reader):
        raise ValueError(f"{store}: split {split!r} holds no clips to evaluate")
    if windowed:
        scores, targets, index, n_windows = windowed_scores(model.to(device), reader, inputs.target_frames,
                                                            inputs.norm_mean, inputs.norm_std, device, batch_size)
        skipped, written = len(reader) - len(index), {"windows": n_windows}
        if reader.target_frames <= inputs.target_frames:
            notes.append(f"--windows: {store}'s clips hold at most {reader.target_frames} frames, no more than the "
                         f"model's {inputs.target_frames}: one window each, the same scores as without it")
    else:
        # as the trainer evaluates: the first target_frames of longer clips, its normalisation
        loader = make_loader(PipelineConfig(store=store, split=split, batch_size=batch_size,
                                            target_frames=inputs.target_frames, norm_mean=inputs.norm_mean,
                                            norm_std=inputs.norm_std,
                                            device="gpu" if device.type == "cuda" else "cpu"), reader)
        try:
            scores, targets, index = loader_scores(model.to(device), loader, reader.multi_label, device)
            skipped = len(getattr(loader, "skipped_clips", ()))
        finally:
            loader.close()
        written = {}
    if not len(index):
        raise ValueError(f"{store}: no clip of split {split!r} could be scored: all {len(reader)} failed their "
                         "checksum (each named above); `c2fdata verify` on the store says how to rebuild them")
    if scores_path is not None:
        write_scores(scores_path, [reader.ids[k] for k in index], scores, targets, inputs.vocabulary.names)
        written["scores"] = str(scores_path)
    return {**compute_metrics(scores, targets, reader.multi_label), "skipped_clips": skipped, "checkpoint": str(path),
            "store": str(store), "split": split, "clips": len(reader) - skipped, "notes": notes, **written}


def write_scores(path: Path, ids: list[str], scores: np.ndarray, targets: np.ndarray, classes) -> None:
    """An .npz of `ids` (N,), `scores` (N, K) float32 (softmax, or sigmoid for multi-label data),
    `targets` ((N, K) multi-hot, or (N,) class indices) and `classes` (K,) names: what a metric
    c2f does not compute (mAP of single-label data, per-class tables) needs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # np.savez would add .npz to a name without it
        np.savez(f, ids=np.asarray(ids), scores=scores.astype(np.float32), targets=targets, classes=np.asarray(classes))
