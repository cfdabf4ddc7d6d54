"""Two launches into one --out: the second is refused naming the first's host and PID; a lock
file left by a dead process is taken over."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from resnets.cli import main
from resnets.errors import UserError
from resnets.runs import LOCK_FILE, RESULTS_FILE, RunLock

FLAGS = ["--data", "digits", "--image-size", "16", "--iters", "2", "--batch-size", "32", "--eval-every", "2",
         "--eval-batch-size", "512", "--device", "cpu", "--no-progress"]

HOLD = """
import sys
from resnets.runs import RunLock
lock = RunLock(sys.argv[1])
print("held", flush=True)
sys.stdin.read()
"""


def test_second_launch_is_refused_while_the_first_holds_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["train", "--out", str(out), *FLAGS]) == 2
        err = capsys.readouterr().err
        assert f"host {socket.gethostname()} pid {holder.pid}" in err and str(out) in err
        assert "Traceback" not in err
        assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # nothing of the first run touched
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    # Once the first is gone, the same command runs.
    assert main(["train", "--out", str(out), *FLAGS]) == 0
    assert (out / RESULTS_FILE).is_file()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_FILE).write_text(f"host {socket.gethostname()} pid {dead.stdout.strip()}\n")
    assert main(["train", "--out", str(out), *FLAGS]) == 0
    assert (out / RESULTS_FILE).is_file()
    assert (out / LOCK_FILE).read_text() == f"host {socket.gethostname()} pid {os.getpid()}\n"


# The holder forks a child that outlives it, as DataLoader workers outlive a SIGKILLed trainer
# for a few seconds (they poll for their parent's death), and then waits to be killed.
HOLD_WITH_CHILD = """
import os, sys, time
from resnets.runs import RunLock
lock = RunLock(sys.argv[1])
child = os.fork()
if child == 0:
    time.sleep(120)
    os._exit(0)
print(child, flush=True)
sys.stdin.read()
"""


def test_lock_of_a_killed_trainer_is_free_while_its_forked_children_live(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WITH_CHILD, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(UserError, match=f"pid {holder.pid}"):
            RunLock(out)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
        os.kill(child, 0)  # the forked child still runs (raises if it has gone)
        lock = RunLock(out)
        assert (out / LOCK_FILE).read_text() == f"host {socket.gethostname()} pid {os.getpid()}\n"
        lock.release()
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_second_lock_in_the_same_process_is_refused_and_the_first_kept(tmp_path):
    first = RunLock(tmp_path)
    try:
        with pytest.raises(UserError, match="this process"):
            RunLock(tmp_path)
        # The refusal opened no descriptor of the file, so the first lock still holds against others.
        probe = subprocess.run([sys.executable, "-c", "import sys\nfrom resnets.runs import RunLock\n"
                                "RunLock(sys.argv[1])", str(tmp_path)], capture_output=True, text=True)
        assert probe.returncode != 0 and "being trained by" in probe.stderr
    finally:
        first.release()
    RunLock(tmp_path).release()
