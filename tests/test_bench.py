"""Smoke tests of the `bench` commands: each runs at tiny sizes and writes sane JSON.

The benchmarks are commands, not timed tests: nothing here checks a speed, only that the
figures exist, are finite and positive, and carry the keys docs/BENCHMARKS.md promises.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import needs_dali

from bench.cli import main
from c2ftrain.trainer import train_step
from c2fdata.pipeline import dali_available
from c2fdata.store import create_store_from_arrays
from c2fdata.vocab import Vocabulary

PHASE_KEYS = {"phase", "method", "factor", "loader_samples_per_s", "model_samples_per_s",
              "end_to_end_samples_per_s", "data_loading_share", "speedup"}
MACHINE_KEYS = {"cpu", "cores", "gpu", "torch", "dali"}


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def run(args: list[str]) -> None:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory):
    """A 48-clip store of 64 frames (train and eval) and a 2-phase recipe on it: pool-avg C=4 -> full."""
    tmp = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]

    def split(n):
        return dict(features=(rng.standard_normal((n, 64, 128)) - 4).astype(np.float16), frames=np.full(n, 64),
                    labels=[[names[i % 3]] for i in range(n)], ids=[str(i) for i in range(n)])

    store = tmp / "store"
    create_store_from_arrays(store, dataset="tiny", vocabulary=Vocabulary.from_names(names), multi_label=False,
                             splits={"train": split(48), "eval": split(16)})
    recipe = tmp / "tiny.toml"
    recipe.write_text(f"""
name = "tiny"
store = "{store}"
[data]
batch_size = 8
num_workers = 1
num_threads = 1
backend = "torch"
[[phases]]
method = "pool-avg"
factor = 4
epochs = 1
[[phases]]
method = "none"
factor = 1
epochs = 1
""")
    return recipe


def test_train_step_changes_the_weights():
    from c2ftrain.model import AST, ast_config

    model = AST(ast_config("tiny", n_mels=128, target_frames=32, num_classes=3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = model.head.weight.detach().clone()
    loss = train_step(model, opt, torch.randn(2, 32, 128), torch.tensor([0, 2]), multi_label=False,
                      clip_grad_norm=1.0)
    assert torch.isfinite(loss) and not torch.equal(before, model.head.weight)


@pytest.mark.parametrize("loader", ["torch"] + (["dali"] if dali_available() else []))
def test_throughput_writes_the_figures(tiny_recipe, tmp_path, loader):
    out, png = tmp_path / "t.json", tmp_path / "t.png"
    run(["throughput", "--recipe", str(tiny_recipe), "--all", "--loader", loader, "--repeats", "2",
         "--warmup", "0", "--batches", "1", "--loader-batches", "2", "--json", str(out), "--plot", str(png)])
    d = json.loads(out.read_text())
    assert MACHINE_KEYS <= set(d["machine"]) and d["reference_phase"] == 2
    assert d["loader"]["backend"] == loader
    rows = {r["phase"]: r for r in d["phases"]}
    assert set(rows) == {1, 2}
    for r in rows.values():
        assert PHASE_KEYS <= set(r)
        for key in ("loader_samples_per_s", "model_samples_per_s", "end_to_end_samples_per_s"):
            assert positive(r[key]), (key, r[key])
        assert 0 <= r["data_loading_share"] <= 1
        assert {"loader", "model", "end_to_end", "flops"} <= set(r["speedup"])
        # each phase's pipeline is built once and kept across rounds (a GPU build costs seconds)
        assert r["pipeline_builds"] == (1 if loader == "dali" else None)
        assert r["loader_cores_during_model"] >= 0
    assert (rows[1]["factor"], rows[1]["frames"], rows[2]["frames"]) == (4, 16, 64)
    assert all(v == pytest.approx(1.0) for v in rows[2]["speedup"].values())  # C = 1 against itself
    assert rows[1]["speedup"]["flops"] > 1
    assert png.stat().st_size > 0


def test_bench_times_the_trainers_own_step():
    import bench.throughput
    import c2ftrain.trainer

    assert bench.throughput.train_step is c2ftrain.trainer.train_step


def test_throughput_reports_the_backend_that_served_with_auto(tiny_recipe, tmp_path):
    """backend = "auto" on a CPU-only run is served by torch (see resolve_backend), whatever
    imports here: the JSON must say so."""
    auto = tmp_path / "auto.toml"
    auto.write_text(tiny_recipe.read_text().replace('backend = "torch"', 'backend = "auto"'))
    out = tmp_path / "t.json"
    run(["throughput", "--recipe", str(auto), "--phase", "1", "--repeats", "1", "--warmup", "0",
         "--batches", "1", "--loader-batches", "1", "--json", str(out)])
    assert json.loads(out.read_text())["loader"]["backend"] == "torch"


def test_throughput_one_phase_adds_the_reference(tiny_recipe, tmp_path):
    out = tmp_path / "t.json"
    run(["throughput", "--recipe", str(tiny_recipe), "--phase", "1", "--repeats", "1", "--warmup", "0",
         "--batches", "1", "--loader-batches", "1", "--json", str(out)])
    assert [r["phase"] for r in json.loads(out.read_text())["phases"]] == [1, 2]


def test_throughput_hands_over_each_timed_round_but_the_last(tiny_recipe, tmp_path):
    """A run cut short (a lent GPU's time limit) keeps the rounds it finished: the CLI rewrites
    its JSON with each; the last is the result itself."""
    from bench.throughput import ThroughputSettings, bench_throughput
    from c2ftrain.recipe import load_recipe

    partial = []
    result = bench_throughput(load_recipe(tiny_recipe), [1], settings=ThroughputSettings(
        repeats=3, warmup=1, batches=1, loader_batches=1), on_round=partial.append)
    assert [(d["finished"], d["timed_rounds"]) for d in partial] == [(False, 1), (False, 2)]
    assert (result["finished"], result["timed_rounds"]) == (True, 3)
    assert [len(r["repeats"]["model"]) for r in partial[1]["phases"]] == [2, 2]
    assert [len(r["repeats"]["model"]) for r in result["phases"]] == [3, 3]
    out = tmp_path / "t.json"
    run(["throughput", "--recipe", str(tiny_recipe), "--repeats", "2", "--warmup", "0", "--batches", "1",
         "--loader-batches", "1", "--json", str(out)])
    assert json.loads(out.read_text())["finished"] is True and not list(tmp_path.glob("*.tmp"))


def test_throughput_batch_size_overrides_every_phase(tiny_recipe, tmp_path):
    out = tmp_path / "t.json"
    run(["throughput", "--recipe", str(tiny_recipe), "--phase", "1", "--batch-size", "4", "--repeats", "1",
         "--warmup", "0", "--batches", "1", "--loader-batches", "1", "--json", str(out)])
    assert [r["batch_size"] for r in json.loads(out.read_text())["phases"]] == [4, 4]
    result = CliRunner().invoke(main, ["throughput", "--recipe", str(tiny_recipe), "--batch-size", "0"])
    assert result.exit_code != 0 and "--batch-size must be >= 1" in result.output


def test_throughput_set_and_compile_reach_the_step(tiny_recipe, tmp_path, monkeypatch):
    """--set edits the recipe as `c2ftrain run --set` does; --compile wraps each phase's model
    (torch.compile itself is stood in for: compiling on this CPU takes minutes)."""
    compiled = []

    def fake_compile(model, mode=None):
        compiled.append(mode)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    out = tmp_path / "t.json"
    run(["throughput", "--recipe", str(tiny_recipe), "--phase", "1", "--set", "optim.fused=true", "--compile",
         "reduce-overhead", "--repeats", "1", "--warmup", "1", "--batches", "1", "--loader-batches", "1",
         "--json", str(out)])
    d = json.loads(out.read_text())
    assert (d["compile"], d["optim_fused"]) == ("reduce-overhead", True) and compiled == ["reduce-overhead"] * 2
    # a compiled step sees full batches only: 48 clips in batches of 10 end each epoch with 8,
    # which would compile again inside a timed round; 3 rounds of 4 steps cross two epochs
    sizes = []

    class Recorded(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x, **kw):
            sizes.append(x.shape[0])
            return self.model(x, **kw)

    monkeypatch.setattr(torch, "compile", lambda model, mode=None: Recorded(model))
    run(["throughput", "--recipe", str(tiny_recipe), "--phase", "1", "--compile", "reduce-overhead",
         "--batch-size", "10", "--repeats", "2", "--warmup", "1", "--batches", "4", "--loader-batches", "1"])
    assert set(sizes) == {10}, sizes
    # a split of 48 clips holds no full batch of 64: said, not an endless wait for one
    result = CliRunner().invoke(main, ["throughput", "--recipe", str(tiny_recipe), "--phase", "1", "--compile",
                                       "reduce-overhead", "--batch-size", "64", "--repeats", "1", "--batches", "1",
                                       "--loader-batches", "1"])
    assert result.exit_code != 0 and "no full batch of 64" in result.output, result.output
    result = CliRunner().invoke(main, ["throughput", "--recipe", str(tiny_recipe), "--compile", "default",
                                       "--warmup", "0"])
    assert result.exit_code != 0 and "--warmup >= 1" in result.output
    result = CliRunner().invoke(main, ["throughput", "--recipe", str(tiny_recipe), "--set", "optim.fused=7"])
    assert result.exit_code != 0 and "[optim] fused: expected true or false, got 7" in result.output


def test_throughput_says_what_it_measures_before_each_part(tiny_recipe, monkeypatch):
    """Off a terminal every part of the run is a line on stderr, so that the log of a run that
    stopped (a GPU job's time limit) shows where; 'compiling' only where a compiled model takes
    its first step."""
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: model)
    result = CliRunner().invoke(main, ["throughput", "--recipe", str(tiny_recipe), "--compile", "default",
                                       "--repeats", "1", "--warmup", "1", "--batches", "1", "--loader-batches", "1"])
    assert result.exit_code == 0, result.output
    said = [line.split("] ", 1)[1] for line in result.stderr.splitlines() if line.startswith("[")]
    first, second = "round 1/2 (warm-up): phase", "round 2/2 (timed): phase"
    assert said == ["checking the recipe and its store", "building the phases' models",
                    f"{first} 1 (pool-avg C=4): model alone, compiling", f"{first} 1 (pool-avg C=4): building its loader",
                    f"{first} 1 (pool-avg C=4): loader alone", f"{first} 1 (pool-avg C=4): end to end",
                    f"{first} 2 (full): model alone, compiling", f"{first} 2 (full): building its loader",
                    f"{first} 2 (full): loader alone", f"{first} 2 (full): end to end",
                    f"{second} 1 (pool-avg C=4): model alone", f"{second} 1 (pool-avg C=4): priming its loader",
                    f"{second} 1 (pool-avg C=4): loader alone", f"{second} 1 (pool-avg C=4): end to end",
                    f"{second} 2 (full): model alone", f"{second} 2 (full): priming its loader",
                    f"{second} 2 (full): loader alone", f"{second} 2 (full): end to end",
                    "closing the loaders"], said
    seconds = [float(line[1:].split(" s]")[0]) for line in result.stderr.splitlines() if line.startswith("[")]
    assert seconds == sorted(seconds) and "samples/s per phase" in result.stdout


class _Stub:
    """A loader whose every batch costs `seconds`, slept (waiting: no CPU) or spun (the main thread's work)."""

    def __init__(self, seconds, busy):
        self.seconds, self.busy = seconds, busy

    def __len__(self):
        return 4

    def __iter__(self):
        from bench.handover import spin

        for _ in range(4):
            spin(self.seconds) if self.busy else time.sleep(self.seconds)
            yield {"features": torch.zeros(2, 8, 4, dtype=torch.bfloat16)}


def test_handover_splits_next_into_the_main_threads_work_and_waiting():
    from bench.handover import _serve

    waited = _serve(_Stub(0.02, busy=False), batches=6, warmup=1, step_s=0.01)
    worked = _serve(_Stub(0.02, busy=True), batches=6, warmup=1, step_s=0.01)
    assert waited["next_ms"]["median"] >= 19 and waited["main_cpu_ms"]["median"] < 5
    assert waited["waiting_ms"]["median"] > 15
    # spinning uses the CPU, as much as the machine gives the thread (other processes share it:
    # what it does not get counts as waiting)
    assert worked["main_cpu_ms"]["median"] >= max(5.0, 3 * waited["main_cpu_ms"]["median"])
    assert worked["waiting_ms"]["median"] < waited["waiting_ms"]["median"]
    # 20 ms inside next() behind a 10 ms step: 2/3 of the time; the floor counts the work only
    assert 0.6 < waited["share_at_step"] < 0.8 and waited["floor_share_at_step"] < 0.35
    assert waited["floor_share_at_step"] < worked["floor_share_at_step"] <= worked["share_at_step"] + 0.01
    assert worked["batch"] == {"shape": [2, 8, 4], "dtype": "bfloat16", "device": "cpu"}


def test_handover_serves_the_trainers_loaders(tiny_recipe, tmp_path):
    out = tmp_path / "h.json"
    loaders = ["torch"] + (["dali"] if dali_available() else [])
    run(["handover", "--recipe", str(tiny_recipe), *[a for lo in loaders for a in ("--loader", lo)], "--batches", "3",
         "--warmup", "1", "--step-ms", "5", "--json", str(out)])
    d = json.loads(out.read_text())
    assert [(r["loader"], r["phase"]) for r in d["rows"]] == [(lo, k) for lo in loaders for k in (1, 2)]
    for r in d["rows"]:
        assert r["batch"]["shape"] == [8, 16 if r["phase"] == 1 else 64, 128] and r["loader_device"] == "cpu"
        assert 0 < r["floor_share_at_step"] <= r["share_at_step"] + 0.01 < 1.01
    result = CliRunner().invoke(main, ["handover", "--recipe", str(tiny_recipe), "--phase", "3"])
    assert result.exit_code != 0 and "has phases 1..2" in result.output
    result = CliRunner().invoke(main, ["handover", "--recipe", str(tiny_recipe), "--step-ms", "0"])
    assert result.exit_code != 0 and "--step-ms must be > 0" in result.output


def test_throughput_refuses_a_missing_phase(tiny_recipe):
    result = CliRunner().invoke(main, ["throughput", "--recipe", str(tiny_recipe), "--phase", "3"])
    assert result.exit_code != 0 and "phases 1..2" in result.output


def test_loaders_writes_the_figures(tmp_path):
    out = tmp_path / "l.json"
    run(["loaders", "--clips", "8", "--seconds", "1", "--batch-size", "4", "--workers", "1", "--repeats", "1",
         "--warmup", "0", "--batches", "2", "--ast-batches", "1", "--json", str(out)])
    d = json.loads(out.read_text())
    assert MACHINE_KEYS <= set(d["machine"])
    names = {"c2f-torch", "ast-style"} | ({"c2f-dali"} if dali_available() else set())
    assert set(d["loaders"]) == names
    for name, rows in d["loaders"].items():
        assert "none/1" in rows and "fshift/4" in rows
        for r in rows.values():
            assert positive(r["samples_per_s"]) and positive(r["vs_own_c1"])
    assert positive(d["loaders"]["c2f-torch"]["none/1"]["vs_ast_style"])
    assert "c2f-torch_ge_10x_ast_at_c1" in d["targets"]


def test_store_writes_the_figures(tmp_path):
    out = tmp_path / "s.json"
    run(["store", "--clips", "96", "--read-clips", "40", "--block-clips", "1,32", "--reads", "100",
         "--repeats", "1", "--json", str(out)])
    d = json.loads(out.read_text())
    assert MACHINE_KEYS <= set(d["machine"])
    assert all(positive(r["clips_per_s_per_worker"]) for r in d["build"].values())
    assert positive(d["reads"]["mmap"]["median"]) and positive(d["reads"]["block_1"]["reader_vs_mmap"])
    # fewer than 3 blocks of 32: no steady rate to time (it divided by zero), refused by name
    r = CliRunner().invoke(main, ["store", "--clips", "64", "--read-clips", "40", "--reads", "10", "--repeats", "1"])
    assert r.exit_code == 1 and "--clips 64: " in r.output and "--clips 96 or more" in r.output, r.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_gpu_options_refused_without_cuda(tiny_recipe):
    for args in (["throughput", "--recipe", str(tiny_recipe), "--device", "cuda"],
                 ["loaders", "--clips", "4", "--device", "gpu"], ["loaders", "--clips", "4", "--device", "cuda"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code != 0 and "CUDA is not available" in result.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_throughput_on_cuda(tiny_recipe, tmp_path):
    out = tmp_path / "t.json"
    run(["throughput", "--recipe", str(tiny_recipe), "--all", "--device", "cuda", "--repeats", "1", "--warmup", "0",
         "--batches", "1", "--loader-batches", "1", "--json", str(out)])
    d = json.loads(out.read_text())
    assert d["machine"]["gpu"] and d["loader"]["device"] == "gpu"
    assert all(positive(r["end_to_end_samples_per_s"]) for r in d["phases"])
    assert all(0 < r["gpu_busy"] <= 1 for r in d["phases"])  # CUDA events inside the end-to-end wall time
    assert set(d["gpu_targets"]) == {"data_loading_share_le_5pct", "gpu_busy_ge_90pct", "end_to_end_speedup_at_c4_ge_3"}


def test_gpu_figures_are_absent_on_the_cpu(tiny_recipe, tmp_path):
    out = tmp_path / "t.json"
    run(["throughput", "--recipe", str(tiny_recipe), "--phase", "1", "--repeats", "1", "--warmup", "0",
         "--batches", "1", "--loader-batches", "1", "--json", str(out)])
    d = json.loads(out.read_text())
    assert d["gpu_targets"] is None
    assert all(r["gpu_busy"] is None and r["gpu_utilization_nvml"] is None for r in d["phases"])


def test_nvml_sampler_reads_while_the_block_runs_and_never_fails(monkeypatch):
    import time

    from bench.throughput import NvmlSampler

    monkeypatch.setattr(torch.cuda, "utilization", lambda device=None: 40)
    with NvmlSampler(torch.device("cuda"), every_s=0.01) as s:
        time.sleep(0.1)
    assert s.samples and set(s.samples) == {0.4}
    with NvmlSampler(None, every_s=0.01) as s:  # not on CUDA: nothing read
        time.sleep(0.05)
    assert s.samples == []

    def no_nvml(device=None):
        raise ModuleNotFoundError("pynvml")

    monkeypatch.setattr(torch.cuda, "utilization", no_nvml)
    with NvmlSampler(torch.device("cuda"), every_s=0.01) as s:
        time.sleep(0.05)
    assert s.samples == []


@needs_dali
def test_pipeline_build_times_spawned_and_forked_readers(tmp_path):
    out = tmp_path / "b.json"
    for method in ("spawn", "fork"):
        run(["pipeline-build", "--workers", "1", "--repeats", "2", "--start-method", method, "--json", str(out)])
        d = json.loads(out.read_text())
        assert d["start_method"] == method and len(d["seconds"]) == 2 and all(positive(s) for s in d["seconds"])
    from c2fdata.pipeline import dali

    assert dali._start_method(False) in ("fork", "spawn") and dali._start_method(True) == "spawn"  # restored


def test_stand_in_store_has_the_shape_asked_for(tmp_path):
    from c2fdata.reader import StoreReader

    out = tmp_path / "asb"
    made = CliRunner().invoke(main, ["stand-in-store", str(out), "--split", "balanced_train=6", "--split", "eval=3",
                                     "--classes", "5", "--seconds", "2", "--workers", "1"])
    assert made.exit_code == 0 and "5 classes (single-label; a class needs a clip)" in made.output, made.output
    train, ev = StoreReader(out, "balanced_train"), StoreReader(out, "eval")
    assert (len(train.ids), len(ev.ids)) == (6, 3)
    # 2 s at a 10 ms shift: 198 Kaldi frames (25 ms windows, snip edges), padded to AST's 1,024
    assert train.features(0).shape == (1024, 128) and set(train.frames()) == {198}
    assert train.n_classes == 5 and train.target_frames == 1024
    result = CliRunner().invoke(main, ["stand-in-store", str(out)])
    assert result.exit_code != 0 and "exists" in result.output
    result = CliRunner().invoke(main, ["stand-in-store", str(tmp_path / "x"), "--split", "train"])
    assert result.exit_code != 0 and "NAME=CLIPS" in result.output


def test_a_busy_machine_is_warned_about_before_measuring(tiny_recipe, tmp_path, monkeypatch):
    from bench.machine import busy_warning

    assert busy_warning(2.0, 2) is None  # a benchmark that just ended leaves about its own load
    assert "load average is 3.50 on 2 cores" in busy_warning(3.5, 2)
    monkeypatch.setattr("os.getloadavg", lambda: (1000.0, 1000.0, 1000.0))  # busy on any machine
    result = CliRunner().invoke(main, ["throughput", "--recipe", str(tiny_recipe), "--repeats", "1", "--warmup", "0",
                                       "--batches", "1", "--loader-batches", "1"])
    assert result.exit_code == 0, result.output
    assert "warning: the 1-minute load average is 1000.00" in " ".join(result.output.split())


def test_descendants_cpu_counts_child_processes_only():
    """Two forked children that spin for 0.6 s each add about 1.2 CPU seconds; a child that sleeps adds none."""
    import multiprocessing
    import time

    from bench.timing import descendants_cpu_s

    def spin(seconds):
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass
        time.sleep(5)  # stays alive (a reaped child leaves /proc) until terminated

    ctx = multiprocessing.get_context("fork")
    before = descendants_cpu_s()
    kids = [ctx.Process(target=spin, args=(0.6,)) for _ in range(2)] + [ctx.Process(target=time.sleep, args=(5,))]
    for k in kids:
        k.start()
    try:
        deadline = time.monotonic() + 20
        while descendants_cpu_s() - before < 1.15 and time.monotonic() < deadline:
            time.sleep(0.1)
        used = descendants_cpu_s() - before
    finally:
        for k in kids:
            k.terminate()
            k.join()
    assert 1.15 <= used <= 1.6, used
