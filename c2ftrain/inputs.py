"""What a trained model expects as input, recorded in every checkpoint it is saved in.

A model is only meaningful on features made as its training features were: the same Kaldi fbank
settings, the same clip length, the normalisation it was trained with, and the same classes in
the same order. A store records the first, a recipe may override the next two (`data.norm_mean`
/ `norm_std`: AST's AudioSet and ESC-50 constants; `data.target_frames`: a shorter crop), and
the classes are the store's vocabulary. `ModelInputs` holds all of them, resolved, so that
`c2ftrain eval` feeds a model what it was trained on whichever store it reads, refuses a store
whose features or classes differ, and `c2ftrain predict` needs no store at all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from c2fdata.features import FbankConfig
from c2fdata.vocab import Vocabulary


@dataclass(frozen=True)
class ModelInputs:
    features: FbankConfig  # the training store's fbank settings
    target_frames: int  # full-resolution frames per clip the model was trained at
    norm_mean: float  # AST's (x - mean) / (2 std), as the training loader applied it
    norm_std: float
    vocabulary: Vocabulary  # output k is vocabulary class k
    multi_label: bool

    def to_dict(self) -> dict:
        return {"features": asdict(self.features), "target_frames": self.target_frames,
                "norm_mean": self.norm_mean, "norm_std": self.norm_std,
                "vocabulary": self.vocabulary.to_list(), "multi_label": self.multi_label}

    @classmethod
    def from_dict(cls, d: dict) -> ModelInputs:
        return cls(FbankConfig.from_dict(d["features"]), int(d["target_frames"]), float(d["norm_mean"]),
                   float(d["norm_std"]), Vocabulary.from_list(d["vocabulary"]), bool(d["multi_label"]))

    @classmethod
    def of_store(cls, reader, target_frames: int, norm_mean: float | None = None,
                 norm_std: float | None = None) -> ModelInputs:
        """A store's inputs (a StoreReader), with the recipe's overrides where it has them."""
        return cls(FbankConfig.from_dict(reader.attrs["features"]), int(target_frames),
                   float(reader.mean if norm_mean is None else norm_mean),
                   float(reader.std if norm_std is None else norm_std), reader.vocabulary, reader.multi_label)

    def check_store(self, reader, checkpoint, store) -> None:
        """ValueError naming what differs where the store (a StoreReader) makes other features or
        has other classes than the model was trained on: its scores there would be meaningless."""
        theirs = ModelInputs.of_store(reader, self.target_frames)
        diff = [f"{f.name} {getattr(theirs.features, f.name)!r} (trained with {getattr(self.features, f.name)!r})"
                for f in fields(FbankConfig) if getattr(theirs.features, f.name) != getattr(self.features, f.name)]
        if theirs.multi_label != self.multi_label:
            diff.append("multi-label" if theirs.multi_label else "single-label")
        if theirs.vocabulary.ids != self.vocabulary.ids:
            diff.append(vocabulary_difference(self.vocabulary, theirs.vocabulary))
        if diff:
            raise ValueError(f"{checkpoint} was not trained on features or classes like those of {store}: "
                             f"{store} has {'; '.join(diff)}. Evaluate it on a store built with the settings and "
                             "classes it was trained on (`c2fdata build` with the same dataset and options)")


def vocabulary_difference(trained: Vocabulary, store: Vocabulary) -> str:
    """How a store's classes differ from a model's, in a few words."""
    if len(trained) != len(store):
        return f"{len(store)} classes (trained on {len(trained)})"
    k = next(i for i, (a, b) in enumerate(zip(trained.ids, store.ids)) if a != b)
    if set(trained.ids) == set(store.ids):
        return f"the same {len(store)} classes in another order (class {k} is {store.ids[k]!r}, trained as {trained.ids[k]!r})"
    return f"other classes (class {k} is {store.ids[k]!r}, trained as {trained.ids[k]!r})"


def checkpoint_inputs(state: dict, cfg, reader, checkpoint, store) -> ModelInputs:
    """What a checkpoint's model (config `cfg`) must be fed, checked against a store (`reader`):
    the inputs it recorded (ValueError if the store differs from them), or for a checkpoint saved
    before they were recorded, the store's (the recipe's normalisation where the checkpoint holds
    the recipe, as checkpoints/last.pt does), after the one check such a checkpoint allows: as
    many classes and mels."""
    if "inputs" in state:
        inputs = ModelInputs.from_dict(state["inputs"])
        inputs.check_store(reader, checkpoint, store)
        return inputs
    if (reader.n_classes, reader.n_mels) != (cfg.num_classes, cfg.n_mels):
        raise ValueError(f"{checkpoint} was trained for {cfg.num_classes} classes x {cfg.n_mels} mels; {store} "
                         f"has {reader.n_classes} x {reader.n_mels}: use the store it was trained on")
    data = state.get("recipe", {}).get("data", {})
    return ModelInputs.of_store(reader, cfg.target_frames, data.get("norm_mean"), data.get("norm_std"))
