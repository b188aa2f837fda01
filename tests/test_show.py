"""`c2fdata show`: the .npy is exactly what the pipeline serves; the .png is a labelled grid."""

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import needs_dali

from c2fdata.cli import main
from c2fdata.pipeline import PipelineConfig, make_loader
from c2fdata.store import create_store_from_arrays
from c2fdata.vocab import Vocabulary


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("show") / "s"
    create_store_from_arrays(path, dataset="t", vocabulary=Vocabulary.from_names(["a", "b"]), multi_label=True,
                             splits={"train": dict(features=rng.normal(-5, 3, (6, 50, 128)), frames=[50, 40, 50, 30, 50, 50],
                                                   labels=[["a"], ["b"], ["a", "b"], ["a"], ["b"], ["a"]],
                                                   ids=list("uvwxyz"))})
    return path


@pytest.mark.parametrize("method, factor", [("none", 1), ("fshift", 3), ("pool-avg", 4), ("pool-max", 2)])
@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=needs_dali)])
def test_npy_is_what_the_pipeline_serves(store, tmp_path, method, factor, backend):
    out = tmp_path / "x.npy"
    res = CliRunner().invoke(main, ["show", str(store), "--split", "train", "--index", "3",
                                    "--method", method, "--factor", str(factor), "--out", str(out)])
    assert res.exit_code == 0, res.output
    loader = make_loader(PipelineConfig(store, "train", method=method, factor=factor, batch_size=6,
                                        backend=backend, num_workers=0, num_threads=1))
    batch = next(iter(loader))
    loader.close()
    np.testing.assert_array_equal(np.load(out), batch["features"][3].numpy())
    assert np.load(out).shape == (50 // factor, 128)


def test_a_clip_by_its_id(store, tmp_path):
    for args, out in ((["--id", "x"], "by_id.npy"), (["--index", "3"], "by_index.npy")):  # ids u..z: x is the 4th
        res = CliRunner().invoke(main, ["show", str(store), "--split", "train", *args, "--out", str(tmp_path / out)])
        assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(np.load(tmp_path / "by_id.npy"), np.load(tmp_path / "by_index.npy"))


def test_png_grid(store, tmp_path):
    out = tmp_path / "x.png"
    res = CliRunner().invoke(main, ["show", str(store), "--split", "train", "--index", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


@pytest.mark.parametrize("args, message", [
    (["--index", "6"], "outside 0..5"),
    (["--index", "0", "--method", "fshift", "--factor", "64"], "leaves 0 frames"),
    (["--index", "0", "--split", "eval"], "no split 'eval'"),
    (["--index", "0", "--method", "pool-avg", "--factor", "0"], "0 is not in the range x>=1"),  # not "all factors"
    (["--id", "q"], "split 'train' serves no clip 'q'"),
    ([], "give the clip as --index N or --id ID"),
    (["--id", "u", "--index", "0"], "give the clip as --index N or --id ID"),
])
def test_bad_requests(store, tmp_path, args, message):
    base = ["show", str(store), "--out", str(tmp_path / "x.npy")]
    if "--split" not in args:
        base += ["--split", "train"]
    res = CliRunner().invoke(main, base + args)
    assert res.exit_code == 2 and message in res.output, res.output
