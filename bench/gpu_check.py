"""`scripts/gpu-check.sh`: one command that proves c2f's GPU paths work, in minutes on one GPU.

Eight steps, each run as subprocesses with its own timeout, pass/fail and duration (a rich table,
and JSON for the record); logs and outputs stay in the work directory:

  a  cuda-tests  pytest -m gpu: every CUDA test of the suite runs (none skipped) and passes
  b  loaders     the DALI GPU loader at every method and C in (1, 2, 4), two epochs each, equals
                 the torch loader on the CPU; one pipeline per phase; bf16 hand-over
  c  throughput  bench throughput of the demo recipe's phase 1 with the model and loader on the GPU
  d  train       a bf16 c2ftrain run, tiny model, fshift -> pool-avg -> pool-max -> patch -> full
  e  eval        c2ftrain eval of d's final.pt gives d's final metric
  f  torchrun    d under torchrun, one process in an NCCL group: d's metrics
  g  resume      d killed (SIGKILL) after its first checkpoint, then --resume: d's metrics
  h  compile     d with model.compile = "reduce-overhead" (CUDA graphs) trains through every method

`--loader torch` serves steps c-h with the torch loader instead of DALI: the trainer's GPU paths
on a machine without DALI (step b still needs it). Without CUDA it says so in one line and exits 2,
running nothing; --dry-run prints every command
(anywhere, CUDA or not). Exit 0: every step passed; 1: some did not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click

from c2fdata.json_files import write_json_atomic
from c2fdata.stacks import DUMP_SIGNAL as STACK_DUMP_SIGNAL

ROOT = Path(__file__).resolve().parents[1]  # commands run here: the demo recipe's store is stores/instruments
PY = sys.executable
METHOD_FACTORS = (("none", 1),) + tuple((m, c) for m in ("fshift", "pool-avg", "pool-max") for c in (1, 2, 4))
RUN_METHODS = ("fshift", "pool-avg", "pool-max", "patch", "none")  # step d's phases, in order
LOADERS = ("dali", "torch")  # what serves steps c-h (--loader)
TOY_SPLITS = {"train": 128, "eval": 64, "eval_extra": 32}  # clips; 128 = 8 full batches of 16
# Runs d, f and g train the same recipe on the same batches, with bf16 autocast on the GPU, where
# some kernels (attention's backward) add in an order that can change between runs: the metrics
# may then differ by a clip or two. Allowed: 3 of the 64 eval clips.
METRIC_TOLERANCE = 3 / 64
# Per-step limits, about twice the longest each took on one H200 (a 27 s, b 79 then 36, c 60, d 88
# with DALI and 17 with torch, e 16, f 22 and g 30 with torch); --timeout-scale stretches them all.
# Much of b, d, f and g with DALI is building pipelines (reader processes): about 7 s each at first
# there, 2.8 s once the readers stopped importing torch.
# h compiles each of d's five phases: 58 s on an H200 with cold caches (torch loader), 96 s on the
# 2-core CPU; its limit leaves room for a slower machine's first Triton compiles.
TIMEOUTS_S = {"a": 90, "b": 180, "c": 120, "d": 180, "e": 75, "f": 180, "g": 300, "h": 300}
# Step h's compiled kernels round otherwise than d's eager ones, so its metrics are not held to
# d's; it must learn the toy task (4 classes: chance is 0.25, d reached 0.78 on an H200).
COMPILED_MIN_METRIC = 0.5
# Step e's predict on CUDA (bf16 autocast) against the same files on the CPU (float32): the
# largest difference of any class's score allowed. bf16 keeps 8 mantissa bits (~0.4% relative)
# through a 2-block model; the scores are probabilities in [0, 1].
PREDICT_SCORE_ATOL = 0.03
TOY_AUDIO_FILES = 4  # noise of 0.3 to 1.2 s: shorter than the toy's 64-frame clips and longer (windows)

Outcome = tuple[bool, str]  # passed, one line of detail


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    stdout: Path | None = None  # stdout alone into this file (to be parsed); else into the log
    kill_when: Path | None = None  # SIGKILL the command once this file exists (it must not end first)

    def __str__(self) -> str:
        line = shlex.join(self.argv)
        if self.stdout:
            line += f" > {self.stdout}"
        if self.kill_when:
            line += f"   # SIGKILL once {self.kill_when} exists"
        return line


@dataclass(frozen=True)
class Step:
    key: str
    name: str
    proves: str
    commands: tuple[Command, ...]
    timeout_s: float
    check: Callable[[], Outcome] | None = None  # after every command succeeded
    needs: tuple[str, ...] = ()  # steps whose outputs this one reads
    env: dict[str, str] = field(default_factory=dict)
    # run directories it writes, emptied first: a step run again (--only with the same --workdir)
    # starts a new run, as `c2ftrain run --out` never writes over one
    fresh: tuple[Path, ...] = ()


# -- the plan -------------------------------------------------------------------------------------
def plan(work: Path, root: Path = ROOT, timeout_scale: float = 1.0, loader: str = "dali") -> list[Step]:
    """Every step, with its commands, for work directory `work` (nothing is run or written).
    loader: what serves steps c-h (dali, the default, or torch: the trainer's GPU paths without
    DALI); step b always compares DALI with torch."""
    if loader not in LOADERS:
        raise ValueError(f"loader must be one of {', '.join(LOADERS)}, got {loader!r}")

    def c2ftrain(*args) -> tuple[str, ...]:
        return (PY, "-m", "c2ftrain", *map(str, args))

    def timeout(key: str) -> float:
        return TIMEOUTS_S[key] * timeout_scale

    toy, run_d, run_f, run_g, run_h = work / "toy", work / "d-run", work / "f-torchrun", work / "g-resume", work / "h-compile"
    recipe = toy / "recipe.toml"
    build = () if (root / "stores" / "instruments").exists() else (
        Command((PY, "-m", "c2fdata.cli", "build", "--dataset", "instruments", "--workers", "2")),)
    throughput_json = work / "c-throughput.json"
    eval_json = work / "e-eval.json"
    predicted = {dev: work / f"e-predict-{dev}.jsonl" for dev in ("cuda", "cpu")}
    return [
        Step("a", "cuda-tests", "every CUDA test of the suite runs, none skipped, and passes",
             (Command((PY, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                       "--junitxml", str(work / "a-pytest.xml"), "tests")),),
             timeout("a"), check=lambda: pytest_outcome(work / "a-pytest.xml")),
        Step("b", "loaders", "DALI on the GPU == torch on the CPU, every method and C, epochs 0 and 1",
             (Command((PY, "-m", "bench.gpu_check", "compare-loaders", str(work / "b-loaders"))),),
             timeout("b"), check=lambda: loaders_outcome(work / "b-loaders" / "result.json")),
        Step("c", "throughput", f"bench throughput trains the demo's phase 1 on CUDA with the {loader} loader",
             build + (Command((PY, "-m", "bench.cli", "throughput", "--phase", "1", "--device", "cuda",
                               "--recipe", "demo", "--loader", loader, "--repeats", "2",
                               "--json", str(throughput_json))),),
             timeout("c"), check=lambda: throughput_outcome(throughput_json)),
        Step("d", "train", "a bf16 run through " + " -> ".join(RUN_METHODS) + " trains, evaluates, saves",
             (Command((PY, "-m", "bench.gpu_check", "toy-run", str(toy), "--loader", loader)),
              Command(c2ftrain("run", recipe, "--no-baseline", "--out", run_d))),
             timeout("d"), check=lambda: train_outcome(run_d), fresh=(run_d,)),
        Step("e", "eval", "c2ftrain eval of final.pt reproduces the run's final metric; c2ftrain predict "
                          "scores audio files on CUDA as on the CPU",
             (Command(c2ftrain("eval", run_d / "c2f" / "final.pt", "--store", toy / "store", "--split", "eval",
                               "--batch-size", "32", "--json"), stdout=eval_json),
              *(Command(c2ftrain("predict", run_d / "c2f" / "final.pt", toy / "audio", "--json", "--top-k", "4",
                                 "--device", dev), stdout=out) for dev, out in predicted.items())),
             timeout("e"), check=lambda: eval_outcome(eval_json, run_d, predicted["cuda"], predicted["cpu"]),
             needs=("d",)),
        Step("f", "torchrun", "torchrun, one process in an NCCL group, trains to d's metrics",
             (Command((PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "c2ftrain",
                       "run", str(recipe), "--no-baseline", "--out", str(run_f))),),
             timeout("f"), check=lambda: torchrun_outcome(run_f, run_d, work / "f-torchrun.log"), needs=("d",),
             env={"NCCL_DEBUG": "INFO"}, fresh=(run_f,)),  # its "NCCL INFO" lines show that a communicator was made
        Step("g", "resume", "SIGKILL after the first checkpoint, then --resume, ends at d's metrics",
             (Command(c2ftrain("run", recipe, "--no-baseline", "--out", run_g),
                      kill_when=run_g / "c2f" / "checkpoints" / "last.pt"),
              Command(c2ftrain("run", "--resume", run_g))),  # as started: --no-baseline is in config.json
             timeout("g"), check=lambda: same_metrics(run_g, run_d), needs=("d",), fresh=(run_g,)),
        Step("h", "compile", "d's run with model.compile = reduce-overhead (CUDA graphs) trains and learns",
             (Command(c2ftrain("run", recipe, "--no-baseline", "--set", 'model.compile="reduce-overhead"',
                               "--out", run_h)),),
             timeout("h"), check=lambda: compiled_outcome(run_h, run_d), needs=("d",), fresh=(run_h,),
             # inductor that cannot graph a step falls back to compiled kernels without graphs and
             # only logs it, off by default: an error here, so that h proves the graphs themselves
             env={"TORCHINDUCTOR_CUDAGRAPH_OR_ERROR": "1"}),
    ]


# -- running --------------------------------------------------------------------------------------
def run_command(cmd: Command, log, timeout_s: float, env: dict[str, str], cwd: Path = ROOT) -> str:
    """Run one command in its own process group; "" when it did what it should, else why not.
    Whatever it leaves behind (reader processes, torchrun's workers) is killed with it."""
    out = open(cmd.stdout, "w") if cmd.stdout else log
    proc = subprocess.Popen(cmd.argv, stdout=out, stderr=log, cwd=cwd, env=env, start_new_session=True)
    groups = ProcessGroups(proc)
    deadline = time.monotonic() + timeout_s
    try:
        if cmd.kill_when is not None:
            while proc.poll() is None and not cmd.kill_when.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.poll() is not None:
                return f"ended (exit code {proc.returncode}) before {cmd.kill_when.name} appeared: nothing to kill"
            if not cmd.kill_when.exists():
                return f"timed out after {timeout_s:.0f} s waiting for {cmd.kill_when.name}{dump_stacks(groups, log)}"
            proc.send_signal(signal.SIGKILL)  # the training process alone, as a crash would
            proc.wait()
            return ""
        rc = proc.wait(timeout=max(deadline - time.monotonic(), 0.001))
        return "" if rc == 0 else f"exit code {rc}"
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout_s:.0f} s{dump_stacks(groups, log)}"
    finally:
        groups.signal(signal.SIGKILL)
        proc.wait()
        if cmd.stdout:
            out.close()


class ProcessGroups:
    """The process groups of a command and of everything it started. torchrun's agent starts
    each worker in a session of its own, which a signal to the command's group does not reach;
    and once the agent has ended, its workers are init's and no longer found below it. So every
    group below is remembered as it is seen, and each signal goes to all those seen so far. The
    tree is only walked while the command is not reaped: after, its pid may be another process's."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.seen = proc, {proc.pid}

    def signal(self, sig: int) -> None:
        from bench.timing import descendants

        own = os.getpgrp()  # never this process's own group (the check itself)
        if self.proc.returncode is None:  # not reaped: its pid (a zombie at worst) is not another's yet
            for pid in {self.proc.pid} | descendants(self.proc.pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    self.seen.add(os.getpgid(pid))
        for group in self.seen - {own}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)


STACKS_NOTE = " (where it was: the Python stacks at the end of its log)"
STACK_DUMP_WAIT_S = 3.0  # for every process of the group to write its stacks before the SIGKILL


def dump_stacks(groups: ProcessGroups, log) -> str:
    """Ask every process of a command that ran out of time where it is: c2f's commands print all
    their threads' stacks on SIGUSR1 (into the step's log) and go on; others (pytest, torchrun's
    agent, spawned reader processes) end on it, as they would on the SIGKILL that follows. Every
    group below the command is asked (torchrun's workers sit in sessions of their own), and the
    whole wait is kept even if the top process ends at once (torchrun's agent does): its workers
    are still writing. Returns STACKS_NOTE if a dump reached the log, else ""."""
    log.flush()
    before = os.path.getsize(log.name)
    groups.signal(STACK_DUMP_SIGNAL)
    time.sleep(STACK_DUMP_WAIT_S)
    with open(log.name, "rb") as f:
        f.seek(before)
        written = f.read()
    return STACKS_NOTE if b"(most recent call first)" in written else ""


def exit_on_sigterm() -> None:
    """SIGTERM (`timeout`, a scheduler's limit) becomes SystemExit, so that run_command's cleanup
    kills the running step's process group: its processes sit in sessions of their own, which a
    signal to this process's group does not reach, and would run on."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def run_step(step: Step, work: Path, cwd: Path = ROOT) -> dict:
    log_path = work / f"{step.key}-{step.name}.log"
    env = {**os.environ, **step.env}
    start, detail, passed = time.monotonic(), "", True
    for stale in step.fresh:
        shutil.rmtree(stale, ignore_errors=True)
    with open(log_path, "w") as log:
        for cmd in step.commands:
            log.write(f"$ {cmd}\n")
            log.flush()
            detail = run_command(cmd, log, step.timeout_s - (time.monotonic() - start), env, cwd)
            if detail:
                passed = False
                break
    if passed and step.check is not None:
        try:
            passed, detail = step.check()
        except Exception as err:  # a missing or malformed output fails its step, not the whole check
            passed, detail = False, f"{type(err).__name__}: {err}"
    return {"key": step.key, "name": step.name, "proves": step.proves, "passed": passed,
            "seconds": round(time.monotonic() - start, 1), "timeout_s": step.timeout_s, "detail": detail,
            "log": str(log_path), "commands": [str(c) for c in step.commands]}


def run_all(steps: list[Step], work: Path, on_result: Callable[[dict], None] = lambda r: None) -> list[dict]:
    results, failed = [], set()
    for step in steps:
        missing = [k for k in step.needs if k in failed]
        if missing:
            result = {"key": step.key, "name": step.name, "proves": step.proves, "passed": False, "seconds": 0.0,
                      "timeout_s": step.timeout_s, "detail": f"not run: needs step {', '.join(missing)}",
                      "log": None, "commands": [str(c) for c in step.commands], "skipped": True}
        else:
            result = run_step(step, work)
        if not result["passed"]:
            failed.add(step.key)
        results.append(result)
        on_result(result)
    return results


# -- checks of the steps' outputs (all CPU-side, so that they are tested without a GPU) -------------
def pytest_outcome(junit_xml: Path) -> Outcome:
    suite = ET.parse(junit_xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    if tests == 0:
        return False, "no test is marked gpu"
    if skipped or bad:  # a skipped CUDA test proves nothing: it is what a CPU-only torch does
        names = [c.get("name") for c in suite.iter("testcase") if c.find("skipped") is not None][:3]
        return False, f"{tests} tests: {bad} failed, {skipped} skipped (e.g. {', '.join(names)})"
    return True, f"{tests} CUDA tests passed"


def loaders_outcome(result_json: Path) -> Outcome:
    r = json.loads(result_json.read_text())
    worst = max(row["max_abs_diff"] for row in r["phases"])
    return True, (f"{len(r['phases'])} phases x 2 epochs equal (max |diff| {worst:.1e}), "
                  f"{r['builds']} pipeline builds, {r['bf16']}")


def throughput_outcome(result_json: Path) -> Outcome:
    r = json.loads(result_json.read_text())
    loader = r["loader"]
    if loader["device"] != "gpu":
        return False, f"the loader ran on {loader['device']}, not the GPU"
    first = r["phases"][0]
    return True, (f"phase {first['phase']} ({first['label']}): {first['end_to_end_samples_per_s']:,.0f} samples/s "
                  f"end to end, {loader['backend']} loader")


def outcome_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "c2f" / "outcome.json").read_text())


def train_outcome(run_dir: Path) -> Outcome:
    o = outcome_of(run_dir)
    methods = tuple(r["method"] for r in o["records"])
    if methods != RUN_METHODS:
        return False, f"phases {methods}, expected {RUN_METHODS}"
    if not (run_dir / "c2f" / "final.pt").is_file():
        return False, "no final.pt"
    return True, f"{o['metric_name']} {o['metric']:.3f} after {len(o['history'])} evaluations"


def metric_gaps(a: dict, b: dict) -> dict[str, float]:
    """|a - b| for every numeric metric both have (skipped_clips and clips are counts, and a run's
    skipped_clips counts its training loaders' too)."""
    return {k: abs(a[k] - b[k]) for k in a.keys() & b.keys() - {"skipped_clips", "clips"}
            if isinstance(a[k], (int, float)) and isinstance(b[k], (int, float))}


def _within(gaps: dict[str, float], what: str) -> Outcome:
    if not gaps:
        return False, f"no metric in common with {what}"
    worst = max(gaps, key=gaps.get)
    ok = gaps[worst] <= METRIC_TOLERANCE
    return ok, f"largest gap to {what}: {worst} {gaps[worst]:.4f} ({'within' if ok else 'over'} {METRIC_TOLERANCE:.4f})"


def history_gaps(run: dict, reference: dict) -> dict[str, float]:
    """Gaps between two runs' outcomes at every evaluation (full and phase resolution) and at
    the end (extra splits included): the evaluations along the way are not yet saturated."""
    if len(run["history"]) != len(reference["history"]):
        raise ValueError(f"{len(run['history'])} evaluations against {len(reference['history'])}")
    gaps = {f"final {k}": v for k, v in metric_gaps(run["metrics"], reference["metrics"]).items()}
    for i, (a, b) in enumerate(zip(run["history"], reference["history"])):
        for key, where in (("metrics", ""), ("metrics_at_phase_resolution", " at phase resolution")):
            if (key in a) != (key in b):  # an evaluation one run made and the other did not
                raise ValueError(f"evaluation {i + 1} ({a['phase_label']}) has {key} in only one of the two runs")
            gaps.update({f"eval {i + 1} ({a['phase_label']}{where}) {k}": v
                         for k, v in metric_gaps(a.get(key, {}), b.get(key, {})).items()})
    return gaps


def same_metrics(run_dir: Path, reference_dir: Path) -> Outcome:
    return _within(history_gaps(outcome_of(run_dir), outcome_of(reference_dir)), "the uninterrupted run")


def eval_outcome(eval_json: Path, run_dir: Path, predict_gpu: Path | None = None,
                 predict_cpu: Path | None = None) -> Outcome:
    text = eval_json.read_text()
    metrics = json.loads(text[text.index("{"):])  # the JSON object, past anything printed before it
    passed, detail = _within(metric_gaps(metrics, outcome_of(run_dir)["metrics"]), "the run's final evaluation")
    if not passed or predict_gpu is None:
        return passed, detail
    gpu, cpu = predictions(predict_gpu), predictions(predict_cpu)
    scored = {dev: sorted(f for f, scores in got.items() if scores) for dev, got in (("CUDA", gpu), ("CPU", cpu))}
    if scored["CUDA"] != scored["CPU"] or len(scored["CUDA"]) < TOY_AUDIO_FILES or len(gpu) != len(scored["CUDA"]):
        return False, f"predict scored {scored['CUDA']} on CUDA and {scored['CPU']} on the CPU, of {sorted(gpu)}"
    if any(set(gpu[f]) != set(cpu[f]) for f in gpu):  # --top-k below the classes: each device its own best
        return False, "predict gave scores for other classes on CUDA than on the CPU (top-k below the classes?)"
    gap = max(abs(gpu[f][c] - cpu[f][c]) for f in gpu for c in cpu[f])
    if gap > PREDICT_SCORE_ATOL:
        return False, f"predict on CUDA differs from the CPU by {gap:.4f} in a score (allowed {PREDICT_SCORE_ATOL})"
    return True, f"{detail}; predict: {len(gpu)} files, CUDA - CPU scores within {gap:.4f}"


def predictions(jsonl: Path) -> dict[str, dict[str, float]]:
    """`c2ftrain predict --json` output -> file -> class -> score ({} for a file it could not
    score); lines that are not JSON objects (a library's banner) are passed over."""
    out = {}
    for line in jsonl.read_text().splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            out[row["path"]] = {c["name"]: c["score"] for c in row["top"]}
    return out


def compiled_outcome(run_dir: Path, reference_dir: Path) -> Outcome:
    passed, detail = train_outcome(run_dir)
    if not passed:
        return passed, detail
    o, ref = outcome_of(run_dir), outcome_of(reference_dir)
    gap = abs(o["metric"] - ref["metric"])  # for the record: compiled kernels round otherwise
    if o["metric"] < COMPILED_MIN_METRIC:
        return False, f"{detail}: below {COMPILED_MIN_METRIC} (the eager run d: {ref['metric']:.3f})"
    return True, f"{detail} (the eager run d: {ref['metric']:.3f}, gap {gap:.4f})"


def torchrun_outcome(run_dir: Path, reference_dir: Path, log: Path) -> Outcome:
    if "NCCL INFO" not in log.read_text(errors="replace"):
        return False, "no NCCL communicator was created (no 'NCCL INFO' line): the run was not in a group"
    return _within(history_gaps(outcome_of(run_dir), outcome_of(reference_dir)), "the single-process run")


# -- what steps b and d run inside their subprocess ----------------------------------------------
def toy_split(n: int, seed: int, frames: int = 64, n_mels: int = 128, classes: int = 4, contrast: float = 2.0) -> dict:
    """Class k: stripes k+1 mel bins wide over a random half of the frames, faint enough that
    20 steps learn them only partly (metrics that are not all 1.0 can tell two runs apart)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feats = rng.normal(-6, 1, (n, frames, n_mels)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    for i, k in enumerate(labels):
        start = rng.integers(0, frames // 2)
        feats[i, start:start + frames // 2, (np.arange(n_mels) // (k + 1)) % 2 == 0] += contrast
    return dict(features=feats, frames=np.full(n, frames), labels=[[f"c{k}"] for k in labels],
                ids=[f"{seed}-{i}" for i in range(n)])


def toy_recipe(store: Path, loader: str = "dali") -> str:
    """Step d's recipe: a tiny AST through every method (patch included), a few steps each,
    checkpoints every 2 steps (step g kills the run at the first), the GPU loader (`loader`) with
    every augmentation, mixup and an extra evaluation split."""
    from c2ftrain.recipe import DataSpec

    phases = "".join(f'\n[[phases]]\nmethod = "{m}"\nfactor = {1 if m == "none" else 2}\nsteps = 4\n'
                      + ("reset_optimizer = false\n" if m == "pool-avg" else "")  # Adam moments carried over
                      for m in RUN_METHODS)
    # the loader hands over bf16 once the recipe can say so (DataSpec.output_dtype)
    dtype = 'output_dtype = "bfloat16"\n' if "output_dtype" in {f.name for f in dataclasses.fields(DataSpec)} else ""
    return f"""name = "gpu-check"
description = "tiny AST, every method, bf16 on the GPU"
store = "{store}"
seed = 0

[model]
preset = "tiny"
embed_dim = 64
depth = 2
num_heads = 2
patch_stride = [16, 16]

[data]
backend = "{loader}"
batch_size = 16
eval_split = "eval"
extra_eval_splits = ["eval_extra"]
num_workers = 2
num_threads = 2
random_crop = false
random_offset = true
freq_mask_bins = 8
time_mask_frames = 8
mixup = 0.5
{dtype}
[optim]
name = "adamw"
lr = 1e-3
warmup_steps = 2

[eval]
every_epochs = 1
checkpoint_every_steps = 2
{phases}"""


def write_toy_run(out: Path, loader: str = "dali") -> Path:
    """The toy store, step d's recipe and step e's audio files under `out`; the recipe's path."""
    from c2fdata.store import create_store_from_arrays
    from c2fdata.vocab import Vocabulary

    out.mkdir(parents=True, exist_ok=True)
    store = out / "store"
    if not store.exists():
        splits = {name: toy_split(n, seed) for seed, (name, n) in enumerate(TOY_SPLITS.items())}
        classes = Vocabulary.from_names([f"c{k}" for k in range(4)])
        create_store_from_arrays(store, dataset="gpu-check", vocabulary=classes, multi_label=False, block_clips=16,
                                 splits=splits)
    audio = out / "audio"  # step e's files for predict
    if not audio.exists():
        import numpy as np
        import soundfile as sf

        audio.mkdir()
        rng = np.random.default_rng(0)
        for i, seconds in enumerate(np.linspace(0.3, 1.2, TOY_AUDIO_FILES)):
            sf.write(audio / f"noise-{i}.wav", (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32),
                     16000, subtype="FLOAT")
    recipe = out / "recipe.toml"
    recipe.write_text(toy_recipe(store, loader))
    return recipe


def compare_loaders(out: Path, device: str = "gpu") -> dict:
    """Step b: one DALI loader on `device` (the GPU; "cpu" tests this code without one) through
    every (method, C), epochs 0 and 1 of each, against the torch loader on the CPU, with every
    augmentation on; AssertionError at the first difference."""
    import numpy as np
    import torch

    from c2fdata.features import FbankConfig
    from c2fdata.pipeline import PipelineConfig, make_loader
    from c2fdata.reader import StoreReader
    from c2fdata.store import create_store_from_arrays
    from c2fdata.vocab import Vocabulary

    rng = np.random.default_rng(0)
    n, frames, n_mels = 40, 64, 32
    frames_kept = rng.integers(30, frames + 1, n)  # shorter and longer than the 48-frame target
    feats = rng.normal(-4, 3, (n, frames, n_mels)).astype(np.float16)
    for i in range(n):
        feats[i, frames_kept[i]:] = 0
    store = out / "store"
    if not store.exists():
        train = dict(features=feats, frames=frames_kept, ids=[str(i) for i in range(n)],
                     labels=[["abc"[i % 3]] for i in range(n)])
        create_store_from_arrays(store, dataset="gpu-check", vocabulary=Vocabulary.from_names(["a", "b", "c"]),
                                 multi_label=False, fbank=FbankConfig(n_mels=n_mels), block_clips=8,
                                 splits={"train": train})
    reader = StoreReader(store, "train")
    cfg = PipelineConfig(store, "train", batch_size=8, shuffle=True, seed=3, target_frames=48, random_crop=True,
                         random_offset=True, freq_mask_bins=6, time_mask_frames=12, num_workers=2, num_threads=2)
    ref = make_loader(cfg.replace(backend="torch", num_workers=0), reader)

    def compare(gpu_loader, cpu_loader, epoch: int, rtol: float) -> float:
        worst = 0.0
        for g, c in zip(gpu_loader.epoch_batches(epoch), cpu_loader.epoch_batches(epoch), strict=True):
            assert all(v.is_cuda == (device == "gpu") for v in g.values()), "a batch tensor is not on the device"
            assert g["features"].dtype == c["features"].dtype, (g["features"].dtype, c["features"].dtype)
            assert torch.equal(g["index"].cpu(), c["index"]) and torch.equal(g["labels"].cpu(), c["labels"])
            torch.testing.assert_close(g["features"].cpu(), c["features"], rtol=rtol, atol=1e-6)
            worst = max(worst, (g["features"].cpu().float() - c["features"].float()).abs().max().item())
        return worst

    rows = []
    with make_loader(cfg.replace(backend="dali", device=device), reader) as gpu:
        for method, factor in METHOD_FACTORS:
            for each in (gpu, ref):
                each.set_phase(method, factor)
            worst = max(compare(gpu, ref, epoch, 1e-6) for epoch in (0, 1))
            rows.append({"method": method, "factor": factor, "max_abs_diff": worst})
            print(f"{method} C={factor}: equal over epochs 0 and 1 (max |diff| {worst:.1e})", flush=True)
        builds = gpu.builds
    assert builds == len(METHOD_FACTORS), f"{builds} pipeline builds for {len(METHOD_FACTORS)} phases"
    bf16 = cfg.replace(method="pool-avg", factor=2, output_dtype="bfloat16")
    with make_loader(bf16.replace(backend="dali", device=device), reader) as gpu:
        cpu = make_loader(bf16.replace(backend="torch", num_workers=0), reader)
        compare(gpu, cpu, 0, 2 ** -7)  # a float32 value 1 ulp apart may round to the next bf16
    result = {"phases": rows, "builds": builds, "bf16": "bf16 hand-over equal"}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


# -- command line ---------------------------------------------------------------------------------
def cuda_line() -> str | None:
    """None where CUDA works, else the one line that says why nothing runs."""
    import torch

    if torch.cuda.is_available():
        return None
    build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
    return (f"gpu-check: CUDA is not available here (torch {torch.__version__}, {build}); nothing was run. "
            f"See bash scripts/install.sh --check-gpu")


def results_table(results: list[dict]):
    from rich.table import Table

    t = Table(title="c2f GPU check")
    for col in ("step", "proves", "result", "seconds", "detail"):
        t.add_column(col, justify="right" if col == "seconds" else "left", overflow="fold")
    for r in results:
        mark = "[yellow]SKIP[/]" if r.get("skipped") else ("[green]PASS[/]" if r["passed"] else "[bold red]FAIL[/]")
        t.add_row(f"{r['key']} {r['name']}", r["proves"], mark, f"{r['seconds']:.1f}", r["detail"])
    return t


@click.group()
def main() -> None:
    """The GPU check (`run`) and the pieces its steps run in their own processes."""


@main.command()
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=Path("gpu-check.json"),
              show_default=True, help="Where to write the results.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Logs, stores and runs (default: a new temporary folder, kept).")
@click.option("--only", default="", help="Run only these steps, e.g. 'b,e' (reuses --workdir outputs).")
@click.option("--timeout-scale", default=1.0, show_default=True, help="Multiply every step's timeout.")
@click.option("--loader", type=click.Choice(LOADERS), default="dali", show_default=True,
              help="What serves steps c-h: torch proves the trainer's GPU paths where DALI is missing.")
@click.option("--dry-run", is_flag=True, help="Print every step's commands; run nothing (works without CUDA).")
def run(json_path, workdir, only, timeout_scale, loader, dry_run):
    """Run every GPU step (a-h) with its own timeout; a pass/fail table; exit 0 when all pass."""
    from c2fdata.console import log_console

    console = log_console()
    work = (workdir or Path(tempfile.gettempdir()) / f"c2f-gpu-check-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    steps = plan(work, timeout_scale=timeout_scale, loader=loader)
    keys = [k.strip() for k in only.split(",") if k.strip()]
    unknown = set(keys) - {s.key for s in steps}
    if unknown:
        raise click.UsageError(f"--only: no step {', '.join(sorted(unknown))}; steps are a-h")
    steps = [s for s in steps if not keys or s.key in keys]
    if dry_run:
        for s in steps:
            click.echo(f"# {s.key} {s.name} (timeout {s.timeout_s:.0f} s): {s.proves}")
            for c in s.commands:
                click.echo(("" if not s.env else " ".join(f"{k}={v}" for k, v in s.env.items()) + " ") + str(c))
        return
    why_not = cuda_line()
    if why_not:
        click.echo(why_not, err=True)
        sys.exit(2)
    from bench.machine import describe

    exit_on_sigterm()
    work.mkdir(parents=True, exist_ok=True)
    machine = describe()
    console.print(f"GPU check on {machine['gpu']}, torch {machine['torch']}, DALI {machine['dali']}; work dir {work}")
    start = time.monotonic()
    done: list[dict] = []

    def write(final: bool) -> bool:
        """The JSON so far: rewritten after every step, so that a check stopped from outside
        (a time limit) keeps the steps it finished ("finished": false until the last)."""
        passed = final and all(r["passed"] for r in done)
        payload = {"passed": passed, "finished": final, "seconds": round(time.monotonic() - start, 1),
                   "machine": machine, "loader": loader, "workdir": str(work),
                   "metric_tolerance": METRIC_TOLERANCE, "steps": done}
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(json_path, payload)  # whole or not at all, even if a SIGTERM lands mid-write
        return passed

    def on_result(r: dict) -> None:
        console.print(f"  {r['key']} {r['name']}: {'PASS' if r['passed'] else 'FAIL'} in {r['seconds']:.0f} s  "
                      f"{r['detail']}")
        done.append(r)
        write(final=False)

    results = run_all(steps, work, on_result=on_result)
    console.print(results_table(results))
    passed = write(final=True)
    console.print(f"{'all steps passed' if passed else 'FAILED'}; wrote {json_path}")
    sys.exit(0 if passed else 1)


@main.command("compare-loaders", hidden=True)
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--device", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True)
def compare_loaders_cmd(out, device):
    """Step b: the DALI loader on DEVICE == the torch loader on the CPU."""
    out.mkdir(parents=True, exist_ok=True)
    compare_loaders(out, device)


@main.command("toy-run", hidden=True)
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--loader", type=click.Choice(LOADERS), default="dali", show_default=True)
def toy_run_cmd(out, loader):
    """Step d's store and recipe."""
    click.echo(write_toy_run(out, loader))


if __name__ == "__main__":
    main()
