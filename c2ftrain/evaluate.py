"""Evaluate a saved checkpoint at full resolution on a store split."""

from __future__ import annotations

from pathlib import Path

import torch

from c2fdata.pipeline import PipelineConfig, make_loader
from c2fdata.reader import StoreReader
from c2ftrain.checkpoint import load_checkpoint
from c2ftrain.distributed import Dist
from c2ftrain.model import AST, ASTConfig
from c2ftrain.trainer import evaluate_model


def evaluate_checkpoint(path: Path, store: Path, split: str = "eval", batch_size: int = 64) -> dict:
    state = load_checkpoint(path)
    if "model" not in state or "model_config" not in state:
        raise ValueError(f"{path}: not a c2f checkpoint (no model / model_config)")
    cfg = ASTConfig.from_dict(state["model_config"])
    reader = StoreReader(store, split)
    if reader.n_classes != cfg.num_classes or reader.n_mels != cfg.n_mels:
        raise ValueError(f"{path} was trained for {cfg.num_classes} classes x {cfg.n_mels} mels; "
                         f"{store} has {reader.n_classes} x {reader.n_mels}")
    model = AST(cfg)
    model.set_time_resolution(**state["resolution"])
    model.load_state_dict(state["model"])
    model.set_time_resolution(reader.target_frames)  # evaluate at the store's full resolution
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader = make_loader(PipelineConfig(store=store, split=split, batch_size=batch_size,
                                        device="gpu" if device.type == "cuda" else "cpu"), reader)
    try:
        return evaluate_model(model.to(device), loader, reader.multi_label, device, Dist())
    finally:
        loader.close()
