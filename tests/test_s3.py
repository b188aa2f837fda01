"""Stores on object storage: an S3-compatible server (moto's server mode) on 127.0.0.1 that the
tests start and stop themselves; nothing reaches the network. Skipped where moto or s3fs is not
installed (`pip install 'c2f[s3]'`, which scripts/install.sh does)."""

import json
import os
import socket

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from conftest import tone

from c2fdata.build import BuildConfig, build_store
from c2fdata.cli import main as cli
from c2fdata.reader import CorruptClipError, StoreReader
from c2fdata.storage import StorageError, as_location
from c2fdata.store import StoreFormatError
from c2fdata.verify import verify_store

# Skipped per test, not at import: a module-level skip is reported even when every test here is
# deselected (`pytest -m gpu`), and the GPU check counts any reported skip as a failure.
try:
    import boto3
    import moto.server as moto_server
    import s3fs  # noqa: F401  (fsspec's s3:// filesystem, which the store code opens)
    MISSING = None
except ImportError as err:
    MISSING = f"{err.name} is not installed: pip install 'c2f[s3]'"
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

BUCKET = "features"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request, in every CLI's output
    port = _free_port()
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    srv.start()
    yield f"http://127.0.0.1:{port}"
    srv.stop()


@pytest.fixture
def s3(server, monkeypatch, tmp_path):
    """AWS settings pointing at the local server (never at AWS: instance metadata lookups off),
    a fresh bucket, and fsspec's instance cache cleared so each test sees these settings."""
    import fsspec

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_ENDPOINT_URL": server, "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true", "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                       "AWS_CONFIG_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("C2F_CACHE_DIR", raising=False)
    fsspec.filesystem("s3").clear_instance_cache()
    client = boto3.client("s3", endpoint_url=server)
    client.create_bucket(Bucket=BUCKET)
    yield client
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3audio")
    for i in range(7):
        d = root / "train" / f"k{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        sf.write(d / f"{i}.wav", tone(1.0, seed=i, freq=250 + 30 * i), 16000)
    return root


@pytest.fixture(scope="module")
def local_store(audio, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "store"
    build_store(BuildConfig(dataset="folder", root=audio, out=out, block_clips=3, codec="q32-lz4"))
    return out


def test_build_info_verify_and_read_an_s3_store_as_a_local_one(s3, audio, local_store):
    url = f"s3://{BUCKET}/stores/folder"
    res = build_store(BuildConfig(dataset="folder", root=audio, out=url, block_clips=3, codec="q32-lz4"))
    assert res.finalized and res.path == url
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert "stores/folder/zarr.json" in keys and "stores/folder/train/features/c/2/0/0" in keys
    remote, local = StoreReader(url, "train"), StoreReader(local_store, "train")
    assert len(remote) == len(local) == 7 and remote.ids == local.ids and remote.mean == local.mean
    for i in range(len(local)):
        np.testing.assert_array_equal(remote[i][0], local[i][0])
    assert verify_store(url) == []
    runner = CliRunner()
    info = runner.invoke(cli, ["info", url, "--json"])
    assert info.exit_code == 0 and '"codec": "q32-lz4"' in info.output and url in info.output
    assert runner.invoke(cli, ["verify", url]).exit_code == 0


def test_sharded_build_into_s3(s3, audio, local_store):
    url = f"s3://{BUCKET}/sharded"
    first = build_store(BuildConfig(dataset="folder", root=audio, out=url, block_clips=3, codec="q32-lz4", shard=(0, 2)))
    assert not first.finalized
    second = build_store(BuildConfig(dataset="folder", root=audio, out=url, block_clips=3, codec="q32-lz4", shard=(1, 2)))
    assert second.finalized
    remote, local = StoreReader(url, "train"), StoreReader(local_store, "train")
    for i in range(len(local)):
        np.testing.assert_array_equal(remote.features(i), local.features(i))


def test_missing_shard_and_corrupt_clip_on_s3_raise(s3, audio):
    url = f"s3://{BUCKET}/damaged"
    build_store(BuildConfig(dataset="folder", root=audio, out=url, block_clips=3))
    before = StoreReader(url, "train").features(4)
    s3.delete_object(Bucket=BUCKET, Key="damaged/train/features/c/1/0/0")
    reader = StoreReader(url, "train")
    with pytest.raises(CorruptClipError, match=rf"row 4 .*shard file missing.*`c2fdata repair {url} --block train:1`"):
        reader.features(4)
    reader.features(0)
    assert sum("missing" in p for p in verify_store(url)) == 3
    # the recovery the message gives, on S3: repair finds the block, the same build recomputes it
    from c2fdata.repair import mark_for_rebuild, plan_repair

    plan = plan_repair(url)
    assert plan.blocks == {"train": [1]} and plan.unrepairable == []
    mark_for_rebuild(url, plan)
    build_store(BuildConfig(dataset="folder", root=audio, out=url, block_clips=3))
    assert verify_store(url) == []
    np.testing.assert_array_equal(StoreReader(url, "train").features(4), before)


def test_local_read_cache(s3, audio, local_store, tmp_path, monkeypatch):
    url = f"s3://{BUCKET}/cached"
    build_store(BuildConfig(dataset="folder", root=audio, out=url, block_clips=3, codec="q32-lz4"))
    monkeypatch.setenv("C2F_CACHE_DIR", str(tmp_path / "cache"))
    reader, local = StoreReader(url, "train"), StoreReader(local_store, "train")
    np.testing.assert_array_equal(reader.features(5), local.features(5))
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert len(cached) == 1 and cached[0].stat().st_size > 0  # shard 1, downloaded whole
    s3.delete_object(Bucket=BUCKET, Key="cached/train/features/c/1/0/0")
    np.testing.assert_array_equal(reader.features(4), local.features(4))  # now served from the cache


def test_clear_errors_for_bad_s3_locations(s3, audio, monkeypatch):
    with pytest.raises(StorageError, match="bucket 'nope' does not exist at http://127.0.0.1"):
        build_store(BuildConfig(dataset="folder", root=audio, out="s3://nope/store"))
    with pytest.raises(StoreFormatError, match="s3://features/absent: no store here"):
        StoreReader(f"s3://{BUCKET}/absent", "train")
    result = CliRunner().invoke(cli, ["info", "s3://features/absent"])
    assert result.exit_code == 2 and "no store here" in result.output
    with pytest.raises(StorageError, match="no bucket in the URL"):
        as_location("s3://")
    import fsspec

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    fsspec.filesystem("s3").clear_instance_cache()
    with pytest.raises(StorageError, match="no AWS credentials found; set AWS_ACCESS_KEY_ID"):
        StoreReader(f"s3://{BUCKET}/x", "train")
    monkeypatch.setitem(__import__("sys").modules, "s3fs", None)  # as if not installed
    with pytest.raises(StorageError, match="need s3fs.*pip install 'c2f\\[s3\\]'"):
        as_location(f"s3://{BUCKET}/x")
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")


def test_train_eval_and_predict_on_an_s3_store(s3, audio, local_store, tmp_path):
    """Training reads an s3:// store through forked DataLoader workers (which must not use the
    parent's store handles: they are bound to its event loop); `c2ftrain eval --store` and
    `predict --store` take a URL as every other command does, with the same metrics and scores
    as from a local copy of the store, and a clear error for none."""
    from test_trainer import toy_recipe

    from c2ftrain.cli import main as train_cli
    from c2ftrain.trainer import PhaseTrainer

    url = f"s3://{BUCKET}/trained-on"
    build_store(BuildConfig(dataset="folder", root=audio, out=url, block_clips=3, codec="q32-lz4"))
    recipe = toy_recipe(url, eval_split="train", batch_size=4, num_workers=2)
    PhaseTrainer(recipe, recipe.phases, tmp_path / "run", "c2f", device="cpu").run()
    final = str(tmp_path / "run" / "final.pt")
    runner = CliRunner()
    local, remote = (runner.invoke(train_cli, ["eval", final, "--store", s, "--split", "train", "--json",
                                               "--device", "cpu"]) for s in (str(local_store), url))
    assert local.exit_code == remote.exit_code == 0, remote.output
    assert {**json.loads(remote.output), "store": None} == {**json.loads(local.output), "store": None}
    assert json.loads(remote.output)["store"] == url
    plain, checked = (runner.invoke(train_cli, ["predict", final, str(audio), "--json", "--device", "cpu", *extra])
                      for extra in ([], ["--store", url]))
    assert plain.exit_code == checked.exit_code == 0, checked.output
    assert len(checked.output.splitlines()) == 7 and checked.output == plain.output
    for command in (["eval", final, "--store"], ["predict", final, str(audio), "--store"]):
        missing = runner.invoke(train_cli, [*command, f"s3://{BUCKET}/absent"])
        assert missing.exit_code == 2 and f"--store s3://{BUCKET}/absent: no store there" in missing.output
    bad_bucket = runner.invoke(train_cli, ["eval", final, "--store", "s3://nope/store"])
    assert bad_bucket.exit_code == 2 and "bucket 'nope' does not exist" in bad_bucket.output
