"""Several training splits read as one (AudioSet full = balanced_train + unbalanced_train):
indexing over the union, sampling weights over the union, both backends, a corrupt clip named by
its own split, and recipes and the trainer taking a list."""

import logging
import pickle

import numpy as np
import pytest
import torch

from c2fdata.features import FbankConfig
from c2fdata.pipeline import PipelineConfig, SplitsReader, balanced_weights, make_loader, open_reader
from c2fdata.reader import StoreReader
from c2fdata.store import create_store_from_arrays
from c2fdata.vocab import Vocabulary
from c2ftrain.recipe import RecipeError, load_recipe
from test_pipeline import assert_same_batches, collect, needs_dali

FRAMES, N_MELS, BLOCK = 40, 16, 8
NAMES = ["dog", "cat", "bird", "rain"]
SIZES = {"balanced_train": 11, "unbalanced_train": 29, "eval": 6}


def split_data(n, seed):
    rng = np.random.default_rng(seed)
    feats = rng.normal(-4, 3, (n, FRAMES, N_MELS)).astype(np.float16)
    frames = rng.integers(20, FRAMES + 1, n)
    labels = [list(rng.choice(NAMES, size=rng.integers(1, 3), replace=False)) for _ in range(n)]
    return dict(features=feats, frames=frames, labels=labels, ids=[f"{seed}-{i}" for i in range(n)])


def make_audioset_like(path):
    create_store_from_arrays(
        path, dataset="toy", vocabulary=Vocabulary.from_names(NAMES), multi_label=True,
        splits={name: split_data(n, seed) for seed, (name, n) in enumerate(SIZES.items())},
        train_split="unbalanced_train", fbank=FbankConfig(n_mels=N_MELS), block_clips=BLOCK,
    )
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_audioset_like(tmp_path_factory.mktemp("splits") / "as")


TRAIN = ("balanced_train", "unbalanced_train")


def test_union_indexes_its_parts_in_order(store):
    union = open_reader(store, list(TRAIN))
    parts = [StoreReader(store, s) for s in TRAIN]
    assert isinstance(union, SplitsReader) and isinstance(open_reader(store, "eval"), StoreReader)
    assert len(union) == 11 + 29 and union.split == "balanced_train+unbalanced_train"
    for i in (0, 10, 11, 39, -1):
        part, j = (parts[0], i) if 0 <= i < 11 else (parts[1], i % 40 - 11)
        f, n, y = union[i]
        g, m, z = part[j]
        assert np.array_equal(f, g) and n == m and np.array_equal(y, z)
    np.testing.assert_array_equal(union.labels(), np.concatenate([p.labels() for p in parts]))
    np.testing.assert_array_equal(union.frames(), np.concatenate([p.frames() for p in parts]))
    assert union.ids == parts[0].ids + parts[1].ids
    assert union.where(12) == ("unbalanced_train", int(parts[1].rows[1]))
    assert (union.n_classes, union.n_mels, union.mean, union.multi_label) == \
        (parts[0].n_classes, parts[0].n_mels, parts[0].mean, True)
    with pytest.raises(IndexError):
        union[40]
    with pytest.raises(AttributeError, match="rows"):
        union.rows  # a per-split thing: no meaning for the union
    restored = pickle.loads(pickle.dumps(union))
    assert np.array_equal(restored[20][0], union[20][0])


def test_split_lists_are_validated():
    assert PipelineConfig("s", split=["a", "b"]).split == ("a", "b")
    assert PipelineConfig("s", split=["a"]).split == "a"  # one split, one form
    assert PipelineConfig.from_dict(PipelineConfig("s", split=("a", "b")).to_dict()).split == ("a", "b")
    for bad, message in (([], "non-empty list"), (["a", "a"], "twice"), (["a", ""], "non-empty list")):
        with pytest.raises(ValueError, match=message):
            PipelineConfig("s", split=bad)


@pytest.mark.parametrize("backend", [pytest.param("dali", marks=needs_dali), "torch"])
def test_an_epoch_reads_every_clip_of_every_split_once(store, backend):
    cfg = PipelineConfig(store, TRAIN, batch_size=8, shuffle=True, seed=3, backend=backend, num_workers=0,
                         num_threads=1, normalize=False)
    union = open_reader(store, TRAIN)
    with make_loader(cfg) as loader:
        batches = list(loader)
    index = torch.cat([b["index"] for b in batches]).numpy()
    assert sorted(index.tolist()) == list(range(40))
    features = torch.cat([b["features"] for b in batches])
    for k in (0, 5, 30):
        assert torch.equal(features[k], torch.from_numpy(union[int(index[k])][0]).float())


def test_balanced_weights_and_mixup_partners_range_over_the_union(store):
    cfg = PipelineConfig(store, TRAIN, batch_size=8, balanced=True, num_samples=400, seed=1, backend="torch",
                         num_workers=0, mixup=1.0)
    loader = make_loader(cfg)
    union = open_reader(store, TRAIN)
    np.testing.assert_array_equal(loader.plan.weights, balanced_weights(union.labels()))
    index = torch.cat([b["index"] for b in loader]).numpy()
    assert index.min() < 11 <= index.max()  # draws from both splits
    from c2fdata.pipeline.mixup import draw_mixup

    partners = draw_mixup(1, 0, np.arange(400), len(union), 1.0, 10.0).partner
    assert partners.min() < 11 <= partners.max()


@needs_dali
def test_backends_agree_on_several_splits(store):
    cfg = PipelineConfig(store, TRAIN, batch_size=8, shuffle=True, seed=3, num_workers=1, num_threads=1,
                         random_crop=True, freq_mask_bins=4, time_mask_frames=8, mixup=0.5, mixup_domain="power",
                         target_frames=32)
    torch_batches = collect(make_loader(cfg.replace(backend="torch")), 2)
    with make_loader(cfg.replace(backend="dali")) as loader:
        assert_same_batches(torch_batches, collect(loader, 2))


def test_a_corrupt_clip_is_named_by_its_own_split(store, tmp_path, caplog):
    import shutil

    path = tmp_path / "corrupt"
    shutil.copytree(store, path)
    flip_split(path, "unbalanced_train", row=9)
    caplog.set_level(logging.WARNING, logger="c2fdata")
    with make_loader(PipelineConfig(path, TRAIN, batch_size=8, backend="torch", num_workers=0)) as loader:
        served = torch.cat([b["index"] for b in loader])
        assert loader.skipped_clips == [("unbalanced_train", 9)]
    assert len(served) == 39 and 11 + 9 not in served.tolist()
    assert any("'unbalanced_train', row 9" in r.message for r in caplog.records)


def flip_split(path, split, row):
    """Flip a byte inside one clip's chunk of a shard file (test_integrity's corruption): finite
    values, the right shape, a failing crc32c."""
    shard = path / split / "features" / "c" / str(row // BLOCK) / "0" / "0"
    data = bytearray(shard.read_bytes())
    index = np.frombuffer(bytes(data[-(16 * BLOCK + 4):-4]), "<u8").reshape(BLOCK, 2)  # (offset, nbytes)
    data[int(index[row % BLOCK, 0]) + 10] ^= 0x04
    shard.write_bytes(bytes(data))


def test_recipes_take_a_list_of_training_splits(store):
    recipe = load_recipe("audioset_full", {"store": str(store)})
    assert recipe.data.train_split == TRAIN
    assert load_recipe("audioset_full", {"data.train_split": "unbalanced_train"}).data.train_split == "unbalanced_train"
    assert load_recipe("audioset_full", {"data.train_split": ["unbalanced_train"]}).data.train_split == "unbalanced_train"
    with pytest.raises(RecipeError, match="data.train_split.*twice"):
        load_recipe("audioset_full", {"data.train_split": ["eval", "eval"]})


def test_trainer_reads_the_union(store, tmp_path):
    from c2ftrain.recipe import recipe_from_dict
    from c2ftrain.trainer import PhaseTrainer

    recipe = recipe_from_dict({
        "name": "toy", "store": str(store),
        "model": {"preset": "tiny", "embed_dim": 32, "depth": 1, "num_heads": 2, "patch_stride": [16, 16]},
        "data": {"batch_size": 8, "backend": "torch", "num_workers": 0, "train_split": list(TRAIN),
                 "balanced": True, "mixup": 0.5, "mixup_domain": "power", "freq_mask_bins": 4},
        "phases": [{"method": "fshift", "factor": 2, "steps": 2}, {"method": "none", "factor": 1, "steps": 2}],
    })
    trainer = PhaseTrainer(recipe, recipe.phases, tmp_path / "run", "c2f", device="cpu")
    assert len(trainer.reader) == 40 and trainer.base.split == TRAIN
    outcome = trainer.run()
    assert outcome.records[-1].steps == 2 and "mAP" in outcome.metrics
