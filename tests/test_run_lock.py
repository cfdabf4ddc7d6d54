"""Two launches into one --out: the second is refused naming the first's host and PID; a lock
file left by a dead process is taken over."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

from resnets.cli import main
from resnets.runs import LOCK_FILE, RESULTS_FILE

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
