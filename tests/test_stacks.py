"""Where a stuck job is: the command-line tools print every thread's stack on SIGUSR1 and go on;
StallWatch prints them when progress stops. Each case runs in a process of its own (a signal
handler and faulthandler's watchdog are process-wide)."""

import subprocess
import sys
import textwrap

import pytest

from c2fdata.stacks import StallWatch


def python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.parametrize("cli, command", [("c2fdata.cli", "info"), ("c2ftrain.cli", "eval"), ("bench.cli", "store")])
def test_every_cli_prints_its_stacks_on_sigusr1_and_goes_on(cli, command):
    proc = python(f"""
        import os, signal, sys
        from {cli} import main
        try:
            main(["{command}", "--help"], standalone_mode=False)
        except SystemExit:
            pass
        def after_the_command_ran():
            os.kill(os.getpid(), signal.SIGUSR1)
        after_the_command_ran()
        print("still running")
    """)
    assert proc.returncode == 0, proc.stderr
    assert "still running" in proc.stdout
    assert "in after_the_command_ran" in proc.stderr and "Current thread" in proc.stderr, proc.stderr


def test_without_the_cli_sigusr1_ends_a_python_process():
    """The reference: what the handler prevents (SIGUSR1's default action ends the process)."""
    proc = python("""
        import os, signal
        os.kill(os.getpid(), signal.SIGUSR1)
        print("still running")
    """)
    assert proc.returncode == -10 and "still running" not in proc.stdout


def test_a_stall_prints_the_stacks_and_progress_prevents_it():
    proc = python("""
        import time
        from c2fdata.stacks import StallWatch
        def moving_along(watch):
            for _ in range(20):  # 1 s in all, progress every 0.05 s: never 0.4 s without
                time.sleep(0.05)
                watch.progress()
        def stuck_in_here():
            time.sleep(1.0)
        with StallWatch(0.4) as watch:
            moving_along(watch)
            print("moved", flush=True)
            stuck_in_here()
        def after_the_watch():
            time.sleep(1.0)  # the watch is off: no dump from here
        after_the_watch()
        print("done")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["moved", "done"]
    err = proc.stderr
    assert "moving_along" not in err, err
    # 1 s stuck, a dump every 0.4 s: two (0.4, 0.8; a third if a busy machine slept long), none after the block
    assert err.count("in stuck_in_here") in (2, 3) and "after_the_watch" not in err, err
    assert "Timeout (0:00:00.400000)!" in err


def test_stall_watch_off_and_bad_values():
    with StallWatch(0) as watch:  # off: nothing armed, progress is harmless
        watch.progress()
    assert watch.stream is None
    with pytest.raises(ValueError, match="must be >= 0"):
        StallWatch(-1)
