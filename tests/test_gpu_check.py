"""scripts/gpu-check.sh and install.sh's GPU check, without a GPU: the no-CUDA answer, every step's
commands, the step runner (timeouts, kills, dependencies) and the checks of each step's outputs."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import needs_dali

from bench import gpu_check as gc

ROOT = Path(__file__).resolve().parents[1]
STEPS = {"a": "cuda-tests", "b": "loaders", "c": "throughput", "d": "train", "e": "eval", "f": "torchrun", "g": "resume",
         "h": "compile"}


def gpu_check(*args, timeout=120):
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer given without CUDA")
def test_without_cuda_it_says_so_in_one_line_and_runs_nothing(tmp_path):
    proc = gpu_check("--json", tmp_path / "r.json", "--workdir", tmp_path / "work")
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and "CUDA is not available here" in lines[0], lines
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "work").exists()


def test_gpu_bench_refuses_bad_arguments_and_a_machine_without_cuda(tmp_path):
    script = ROOT / "scripts" / "gpu-bench.sh"
    for args, message in ((["--bogus"], "unknown argument --bogus"),
                          (["--loader", "cupy"], "--loader must be dali, torch or both"),
                          (["--batch-size"], "--batch-size needs a value")):
        proc = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2 and message in proc.stderr
    if not torch.cuda.is_available():
        proc = subprocess.run(["bash", str(script), "--out", str(tmp_path / "o")], capture_output=True, text=True,
                              timeout=60, check=False)
        assert proc.returncode == 2 and "CUDA is not available here" in proc.stderr
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, phases", [([], ["--all"]), (["--phase", "1"], ["--phase", "1"]),
                                          (["--phase", "1", "--phase", "2"], ["--phase", "1", "--phase", "2"])])
def test_gpu_bench_measures_every_phase_or_those_named(tmp_path, args, phases):
    """What the script asks of `bench throughput`, read from a stand-in python that logs its calls."""
    log = tmp_path / "calls"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')  # "CUDA is available", every run ends well
    fake.chmod(0o755)
    (tmp_path / "store").mkdir()
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-bench.sh"), "--loader", "torch", "--store",
                           str(tmp_path / "store"), "--out", str(tmp_path / "o"), *args],
                          capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "PYTHON": str(fake)})
    assert proc.returncode == 0, proc.stderr
    [bench] = [line.split() for line in log.read_text().splitlines() if "throughput" in line]
    assert [w for i, w in enumerate(bench) if w in ("--all", "--phase") or bench[i - 1] == "--phase"] == phases
    suffix = "".join(f"-p{n}" for n in phases[1::2])
    assert bench[bench.index("--json") + 1] == str(tmp_path / "o" / f"throughput-asb-gpu-torch{suffix}.json")


def test_dry_run_prints_every_steps_commands_and_writes_nothing(tmp_path):
    proc = gpu_check("--dry-run", "--workdir", tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for key, name in STEPS.items():
        assert f"# {key} {name} (timeout " in out
    for fragment in ("-m pytest -q -m gpu", "compare-loaders", "throughput --phase 1 --device cuda --recipe demo --loader dali --repeats 2",
                     "toy-run", "--loader dali",
                     "-m c2ftrain run", "--no-baseline", "-m c2ftrain eval", "d-run/c2f/final.pt",
                     "NCCL_DEBUG=INFO", "torch.distributed.run --standalone --nproc_per_node=1",
                     "SIGKILL once", "g-resume/c2f/checkpoints/last.pt", "run --resume",
                     "--set 'model.compile=\"reduce-overhead\"' --out", "h-compile"):
        assert fragment in out, fragment
    assert not (tmp_path / "work").exists()


def test_loader_torch_serves_steps_c_to_g_and_b_still_tests_dali(tmp_path):
    out = gpu_check("--dry-run", "--loader", "torch", "--workdir", tmp_path / "work").stdout
    assert "--recipe demo --loader torch" in out and "toy-run" in out and "--loader torch" in out
    assert "--loader dali" not in out and "compare-loaders" in out
    recipe = gc.toy_recipe(Path("s"), "torch")
    assert 'backend = "torch"' in recipe
    with pytest.raises(ValueError, match="loader must be one of"):
        gc.plan(tmp_path, loader="cupy")


def test_only_and_timeout_scale(tmp_path):
    proc = gpu_check("--dry-run", "--only", "b,e", "--timeout-scale", "2", "--workdir", tmp_path)
    headers = [line.split(":")[0] for line in proc.stdout.splitlines() if line.startswith("# ")]
    assert headers == [f"# b loaders (timeout {2 * gc.TIMEOUTS_S['b']} s)", f"# e eval (timeout {2 * gc.TIMEOUTS_S['e']} s)"]
    proc = gpu_check("--dry-run", "--only", "z")
    assert proc.returncode == 2 and "no step z" in proc.stderr


def test_the_demo_store_is_built_only_where_it_is_missing(tmp_path):
    def throughput_step():
        return next(s for s in gc.plan(tmp_path / "work", root=tmp_path) if s.key == "c")

    assert [str(c).split(" -m ")[1].split()[0] for c in throughput_step().commands] == ["c2fdata.cli", "bench.cli"]
    assert "build --dataset instruments --workers 2" in str(throughput_step().commands[0])
    (tmp_path / "stores" / "instruments").mkdir(parents=True)
    assert [str(c).split(" -m ")[1].split()[0] for c in throughput_step().commands] == ["bench.cli"]


# -- the runner -----------------------------------------------------------------------------------
def python_step(key, *scripts, timeout=30, check=None, needs=()):
    commands = tuple(gc.Command((sys.executable, "-c", s)) for s in scripts)
    return gc.Step(key, f"step-{key}", "what it proves", commands, timeout, check=check, needs=needs)


def test_steps_pass_fail_time_out_and_skip_what_needs_a_failed_step(tmp_path):
    steps = [
        python_step("a", "print('one')", "print('two')"),
        python_step("b", "import sys; sys.exit(3)", "print('never run')"),
        python_step("c", "import time; time.sleep(60)", timeout=1),
        python_step("d", "print('x')", needs=("b",)),
        python_step("e", "print('x')", check=lambda: (False, "its output is wrong")),
        python_step("f", "print('x')", check=lambda: json.loads("{"), needs=("a",)),
    ]
    results = {r["key"]: r for r in gc.run_all(steps, tmp_path)}
    assert results["a"]["passed"] and (tmp_path / "a-step-a.log").read_text().count("$ ") == 2
    assert not results["b"]["passed"] and results["b"]["detail"] == "exit code 3"
    assert "never run" not in (tmp_path / "b-step-b.log").read_text()
    assert not results["c"]["passed"] and results["c"]["detail"] == "timed out after 1 s" and results["c"]["seconds"] < 10
    assert results["d"]["skipped"] and results["d"]["detail"] == "not run: needs step b"
    assert not results["e"]["passed"] and results["e"]["detail"] == "its output is wrong"
    assert not results["f"]["passed"] and results["f"]["detail"].startswith("JSONDecodeError")


def test_the_json_is_rewritten_after_every_step(tmp_path, monkeypatch):
    """A check stopped from outside (a device's time limit) keeps the steps it finished."""
    from click.testing import CliRunner

    out = tmp_path / "r.json"
    seen = []

    def fake_plan(work, timeout_scale=1.0, loader="dali"):
        check = lambda: (seen.append(json.loads(out.read_text())), (True, "ok"))[1]
        return [python_step("a", "pass"), python_step("b", "pass", check=check)]

    monkeypatch.setattr(gc, "plan", fake_plan)
    monkeypatch.setattr(gc, "cuda_line", lambda: None)
    monkeypatch.setattr(gc, "exit_on_sigterm", lambda: None)  # not in pytest's own process
    result = CliRunner().invoke(gc.main, ["run", "--json", str(out), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    assert seen[0]["finished"] is False and [r["key"] for r in seen[0]["steps"]] == ["a"]  # while b ran
    final = json.loads(out.read_text())
    assert final["finished"] and final["passed"] and [r["key"] for r in final["steps"]] == ["a", "b"]
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith("r.json")] == ["r.json"]  # no temp left


def test_no_stacks_note_where_no_stack_was_written(tmp_path):
    [result] = gc.run_all([python_step("a", "import time; time.sleep(60)", timeout=2)], tmp_path)
    assert result["detail"] == "timed out after 2 s"  # a plain process ends on SIGUSR1, saying nothing


@pytest.mark.parametrize("own_session", [False, True])
def test_a_timed_out_step_leaves_no_process_behind(tmp_path, own_session):
    """Also a child in a session of its own (torchrun starts its workers so) whose parent ends on
    the stack-dump signal (as torchrun's agent does), leaving it to init."""
    child_pid = tmp_path / "child.pid"
    script = (f"import subprocess, sys, time, pathlib; p = subprocess.Popen([sys.executable, '-c', 'import time; "
              f"time.sleep(60)'], start_new_session={own_session}); "
              f"pathlib.Path({str(child_pid)!r}).write_text(str(p.pid)); time.sleep(60)")
    [result] = gc.run_all([python_step("a", script, timeout=3)], tmp_path)
    assert result["detail"] == "timed out after 3 s"  # neither process prints stacks
    pid = int(child_pid.read_text())
    for _ in range(50):  # killed with its group; reaped by init
        if not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the step's child process {pid} outlived it")


@pytest.mark.parametrize("under_a_parent", [False, True])
def test_a_timed_out_step_logs_where_it_was(tmp_path, under_a_parent):
    """Before the SIGKILL, a step past its time is asked (SIGUSR1) where it is: c2f's commands
    print every thread's stack into the step's log; the function it hung in is named there. Also
    when the step's top process ends on the signal at once, as torchrun's agent does."""
    script = ("import time\nfrom c2fdata.stacks import install_stack_dumps\ninstall_stack_dumps()\n"
              "def hanging_in_here():\n    time.sleep(60)\nprint('started', flush=True)\nhanging_in_here()\n")
    if under_a_parent:  # no handler here: SIGUSR1 ends it
        script = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {script!r}])\n"
    start = time.monotonic()
    [result] = gc.run_all([python_step("a", script, timeout=4)], tmp_path)
    assert result["detail"] == f"timed out after 4 s{gc.STACKS_NOTE}"
    assert time.monotonic() - start < 4 + gc.STACK_DUMP_WAIT_S + 5
    log = (tmp_path / "a-step-a.log").read_text()
    assert "started" in log and 'in hanging_in_here' in log and "Current thread" in log, log


def test_sigterm_kills_the_running_steps_processes(tmp_path):
    """`timeout 300 gpu-check.sh` must not leave a step running on: its group is not ours."""
    pid_file = tmp_path / "child.pid"
    child_code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    runner = tmp_path / "runner.py"
    runner.write_text(f"""import sys
sys.path.insert(0, {str(ROOT)!r})
from bench import gpu_check as gc
gc.exit_on_sigterm()
gc.run_command(gc.Command((sys.executable, "-c", {child_code!r})), sys.stdout, 60, {{}})
""")
    proc = subprocess.Popen([sys.executable, str(runner)])
    deadline = time.monotonic() + 20
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    proc.terminate()
    assert proc.wait(timeout=10) == 128 + 15
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_a_run_is_killed_once_its_checkpoint_appears(tmp_path):
    checkpoint = tmp_path / "last.pt"
    env = dict(os.environ)
    writes_then_trains_on = f"import pathlib, time; pathlib.Path({str(checkpoint)!r}).write_text('x'); time.sleep(60)"
    start = time.monotonic()
    with open(tmp_path / "log", "w") as log:
        assert gc.run_command(gc.Command((sys.executable, "-c", writes_then_trains_on), kill_when=checkpoint),
                              log, 30, env) == ""
        assert time.monotonic() - start < 20
        # a run that ends before its first checkpoint was never interrupted: that proves nothing
        ends = gc.Command((sys.executable, "-c", "pass"), kill_when=tmp_path / "never.pt")
        assert gc.run_command(ends, log, 30, env) == "ended (exit code 0) before never.pt appeared: nothing to kill"


# -- the checks of each step's outputs ------------------------------------------------------------
def test_pytest_outcome_counts_skipped_cuda_tests_as_failures(tmp_path):
    (tmp_path / "test_x.py").write_text("import pytest\n\ndef test_ok():\n    pass\n\n"
                                        "@pytest.mark.skip(reason='needs CUDA')\ndef test_cuda():\n    pass\n")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml",
                    str(tmp_path / "r.xml"), str(tmp_path / "test_x.py")], capture_output=True, timeout=120)
    passed, detail = gc.pytest_outcome(tmp_path / "r.xml")
    assert not passed and "1 skipped" in detail and "test_cuda" in detail
    (tmp_path / "test_x.py").write_text("def test_ok():\n    pass\n")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml",
                    str(tmp_path / "r.xml"), str(tmp_path / "test_x.py")], capture_output=True, timeout=120)
    assert gc.pytest_outcome(tmp_path / "r.xml") == (True, "1 CUDA tests passed")


def outcome(path: Path, accuracies, final=None, methods=gc.RUN_METHODS):
    """A run directory with an outcome.json: one evaluation per accuracy."""
    history = [{"phase_label": f"phase {i}", "metrics": {"accuracy": a}, "metrics_at_phase_resolution": {"accuracy": a}}
               for i, a in enumerate(accuracies)]
    final = final if final is not None else accuracies[-1]
    (path / "c2f").mkdir(parents=True)
    (path / "c2f" / "outcome.json").write_text(json.dumps({
        "metric_name": "accuracy", "metric": final, "metrics": {"accuracy": final, "eval_extra/accuracy": final},
        "history": history, "records": [{"method": m} for m in methods]}))
    (path / "c2f" / "final.pt").write_bytes(b"")
    return path


def test_runs_agree_within_the_tolerance_at_every_evaluation(tmp_path):
    ref = outcome(tmp_path / "ref", [0.5, 0.75, 0.875])
    close = outcome(tmp_path / "close", [0.5 + 1 / 64, 0.75, 0.875 - 2 / 64])
    far = outcome(tmp_path / "far", [0.5, 0.75 - 4 / 64, 0.875])  # only an evaluation along the way differs
    assert gc.same_metrics(close, ref)[0]
    passed, detail = gc.same_metrics(far, ref)
    assert not passed and "eval 2 (phase 1) accuracy 0.0625 (over" in detail
    with pytest.raises(ValueError, match="2 evaluations against 3"):
        gc.history_gaps(json.loads((outcome(tmp_path / "short", [0.5, 0.75]) / "c2f" / "outcome.json").read_text()),
                        gc.outcome_of(ref))
    lacking = gc.outcome_of(outcome(tmp_path / "lacking", [0.5, 0.75, 0.875]))
    del lacking["history"][1]["metrics"]  # an evaluation at the phase's resolution only
    with pytest.raises(ValueError, match="evaluation 2 \\(phase 1\\) has metrics in only one of the two runs"):
        gc.history_gaps(lacking, gc.outcome_of(ref))
    assert gc.train_outcome(ref) == (True, "accuracy 0.875 after 3 evaluations")
    assert not gc.train_outcome(outcome(tmp_path / "two", [0.5], methods=("pool-avg", "none")))[0]
    # the compiled run of step h: not held to d's metrics (other kernels), but it must learn
    assert gc.compiled_outcome(outcome(tmp_path / "h", [0.25, 0.5, 0.625]), ref) == (
        True, "accuracy 0.625 after 3 evaluations (the eager run d: 0.875, gap 0.2500)")
    passed, detail = gc.compiled_outcome(outcome(tmp_path / "h-chance", [0.25, 0.25, 0.3125]), ref)
    assert not passed and "below 0.5" in detail
    assert not gc.compiled_outcome(outcome(tmp_path / "h-short", [0.9], methods=("none",)), ref)[0]


def test_eval_and_torchrun_checks(tmp_path):
    run = outcome(tmp_path / "run", [0.5, 0.75])
    (tmp_path / "eval.json").write_text('DALI says hello\n{"accuracy": 0.75}\n')
    assert gc.eval_outcome(tmp_path / "eval.json", run)[0]
    (tmp_path / "eval.json").write_text('{"accuracy": 0.5}')
    assert not gc.eval_outcome(tmp_path / "eval.json", run)[0]
    (tmp_path / "eval.json").write_text('{"accuracy": 0.75}')

    def predicted(name, scores, error=""):
        rows = [{"path": f"n{i}.wav", "error": error if i == 1 else "",
                 "top": [] if error and i == 1 else [{"name": "c0", "score": s}, {"name": "c1", "score": 1 - s}]}
                for i, s in enumerate(scores)]
        (tmp_path / name).write_text("DALI banner\n" + "".join(json.dumps(r) + "\n" for r in rows))
        return tmp_path / name

    cpu = predicted("cpu.jsonl", [0.1, 0.5, 0.7, 0.9])
    ok = gc.eval_outcome(tmp_path / "eval.json", run, predicted("gpu.jsonl", [0.11, 0.49, 0.7, 0.9]), cpu)
    assert ok[0] and ok[1].endswith("; predict: 4 files, CUDA - CPU scores within 0.0100")
    far = gc.eval_outcome(tmp_path / "eval.json", run, predicted("gpu.jsonl", [0.1, 0.5, 0.6, 0.9]), cpu)
    assert far == (False, "predict on CUDA differs from the CPU by 0.1000 in a score (allowed 0.03)")
    unscored = gc.eval_outcome(tmp_path / "eval.json", run, predicted("gpu.jsonl", [0.1, 0.5, 0.7, 0.9], "bad"), cpu)
    assert not unscored[0] and "predict scored ['n0.wav', 'n2.wav', 'n3.wav'] on CUDA" in unscored[1]
    cpu_unscored = gc.eval_outcome(tmp_path / "eval.json", run, predicted("gpu.jsonl", [0.1, 0.5, 0.7, 0.9]),
                                   predicted("cpu.jsonl", [0.1, 0.5, 0.7, 0.9], "bad"))
    assert not cpu_unscored[0] and "and ['n0.wav', 'n2.wav', 'n3.wav'] on the CPU" in cpu_unscored[1]
    ddp = outcome(tmp_path / "ddp", [0.5, 0.75])
    (tmp_path / "f.log").write_text("NCCL INFO Init COMPLETE\n")
    assert gc.torchrun_outcome(ddp, run, tmp_path / "f.log")[0]
    (tmp_path / "f.log").write_text("gloo\n")
    assert gc.torchrun_outcome(ddp, run, tmp_path / "f.log") == (
        False, "no NCCL communicator was created (no 'NCCL INFO' line): the run was not in a group")


def test_throughput_check_wants_the_loader_on_the_gpu(tmp_path):
    result = {"loader": {"device": "gpu", "backend": "dali"},
              "phases": [{"phase": 1, "label": "pool-avg C=4", "end_to_end_samples_per_s": 12345.6}]}
    (tmp_path / "t.json").write_text(json.dumps(result))
    assert gc.throughput_outcome(tmp_path / "t.json") == (True, "phase 1 (pool-avg C=4): 12,346 samples/s end to end, dali loader")
    result["loader"]["device"] = "cpu"
    (tmp_path / "t.json").write_text(json.dumps(result))
    assert not gc.throughput_outcome(tmp_path / "t.json")[0]


def test_the_training_recipe_goes_through_every_method(tmp_path):
    from c2ftrain.experiment import check_recipe_against_store
    from c2ftrain.recipe import load_recipe

    recipe = load_recipe(gc.write_toy_run(tmp_path))
    check_recipe_against_store(recipe)  # every phase fits the toy store's 64 frames
    assert tuple(p.method for p in recipe.phases) == gc.RUN_METHODS and recipe.phases[-1].full_resolution
    assert recipe.eval.checkpoint_every_steps == 2 and recipe.data.extra_eval_splits == ("eval_extra",)
    assert recipe.data.backend == "dali" and recipe.data.mixup > 0  # DALI on the GPU, mixup on the GPU
    assert load_recipe(gc.write_toy_run(tmp_path, "torch")).data.backend == "torch"


@needs_dali
def test_the_loader_comparison_runs_on_the_cpu_backend(tmp_path):
    """Step b's own code, with the DALI loader on the CPU (the GPU check runs it on the GPU)."""
    result = gc.compare_loaders(tmp_path, device="cpu")
    assert [(r["method"], r["factor"]) for r in result["phases"]] == list(gc.METHOD_FACTORS)
    assert result["builds"] == len(gc.METHOD_FACTORS) and max(r["max_abs_diff"] for r in result["phases"]) == 0
    assert gc.loaders_outcome(tmp_path / "result.json")[0]


# -- install.sh -----------------------------------------------------------------------------------
@pytest.mark.parametrize("version, replaced", [("2.4.1+cu121", True), ("2.5.1", False), ("2.13.0+cpu", False)])
def test_install_replaces_a_torch_older_than_the_project_takes(tmp_path, version, replaced):
    """A torch below 2.5 left in place, `pip install -e .` (torch>=2.5) would pull the newest
    release; install.sh installs 2.13.0 by name instead, and keeps any release from 2.5 on. A
    stand-in python: pip calls are logged, not run; `import torch` finds a torch of `version`."""
    fake = tmp_path / "site"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text(f"__version__ = {version!r}\n")
    log = tmp_path / "pip.log"
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nif [ \"$1\" = -m ] && [ \"$2\" = pip ]; then echo \"$@\" >> {log}; exit 0; fi\n"
                      f"PYTHONPATH={fake} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    env = {**os.environ, "NVIDIA_SMI": str(tmp_path / "no-nvidia-smi"), "PYTHON": str(python)}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh")], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    installs = log.read_text()
    assert ("torch==2.13.0" in installs) == replaced, installs + proc.stderr
    assert ("older than 2.5, which c2f needs: installing 2.13.0" in proc.stderr) == replaced, proc.stderr
    assert "install -q --disable-pip-version-check -e .[test]" in installs  # the project itself, after torch


# -- install.sh --check-gpu -----------------------------------------------------------------------
def check_gpu(tmp_path, smi_output=None, torch_state=None):
    """install.sh's GPU check with a stand-in nvidia-smi printing smi_output (None: no nvidia-smi)
    and, where torch_state is given, a stand-in python printing it as torch's "version cuda
    available" (so that every branch is checked whatever torch this machine has)."""
    smi = tmp_path / "nvidia-smi"
    if smi_output is not None:
        smi.write_text(f"#!/bin/sh\n{smi_output}\n")
        smi.chmod(0o755)
    python = sys.executable
    if torch_state is not None:
        python = tmp_path / "python"
        python.write_text(f"#!/bin/sh\necho '{torch_state}'\n")
        python.chmod(0o755)
    env = {**os.environ, "NVIDIA_SMI": str(smi), "PYTHON": str(python)}
    return subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), "--check-gpu"], capture_output=True,
                          text=True, env=env, timeout=120)


def test_install_check_is_silent_without_an_nvidia_driver(tmp_path):
    proc = check_gpu(tmp_path)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == ""


def test_install_check_names_an_old_driver(tmp_path):
    proc = check_gpu(tmp_path, "echo 'NVIDIA H100 80GB HBM3, 570.86.15'", "2.13.0+cu130 13.0 True")
    assert proc.returncode == 0
    assert "NVIDIA driver 570.86.15 (NVIDIA H100 80GB HBM3) is too old" in proc.stderr and "580 or later" in proc.stderr
    proc = check_gpu(tmp_path, "exit 9")  # a driver that lists no GPU
    assert proc.returncode == 0 and "lists no GPU" in proc.stderr


def test_install_check_gives_the_pip_command_for_a_cuda_torch(tmp_path):
    proc = check_gpu(tmp_path, "echo 'NVIDIA H100 80GB HBM3, 580.65.06'", "2.11.0+cpu None False")
    assert proc.returncode == 0 and "too old" not in proc.stderr
    assert "torch 2.11.0+cpu is a CPU-only build" in proc.stderr
    assert '-m pip install "torch==2.11.0+cu130" --index-url https://download.pytorch.org/whl/cu130' in proc.stderr


def test_install_check_names_a_cuda_torch_that_sees_no_gpu(tmp_path):
    proc = check_gpu(tmp_path, "echo 'NVIDIA H200, 580.65.06'", "2.11.0+cu130 13.0 False")
    assert proc.returncode == 0 and "CPU-only" not in proc.stderr
    assert "torch 2.11.0+cu130 is built for CUDA 13.0 but" in proc.stderr and "CUDA_VISIBLE_DEVICES" in proc.stderr


def test_install_check_is_silent_when_torch_sees_the_gpu(tmp_path):
    proc = check_gpu(tmp_path, "echo 'NVIDIA H200, 580.65.06'", "2.11.0+cu130 13.0 True")
    assert proc.returncode == 0 and proc.stdout + proc.stderr == ""


def test_install_check_with_this_machines_torch(tmp_path):
    """The real torch's answer reaches the check: whatever build is installed here, the GPU is
    either used (silent) or the warning names this torch's version."""
    proc = check_gpu(tmp_path, "echo 'NVIDIA H100 80GB HBM3, 580.65.06'")
    assert proc.returncode == 0
    if torch.cuda.is_available():
        assert proc.stderr == ""
    else:
        assert f"torch {torch.__version__} " in proc.stderr and "will be SKIPPED" in proc.stderr
