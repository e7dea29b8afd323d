"""k8s/pod_init.py: a rehearsal container's init kills what its command leaves behind (by PID,
whatever the processes call themselves), keeps the command's exit status, and forwards SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil

from k8s.pod_init import ENDED
from k8s.rehearsal import POD_INIT


def test_what_the_command_leaves_behind_is_killed_at_its_end():
    # an orphan renamed as Ray's daemons rename themselves, in a session of its own
    run = subprocess.run([sys.executable, POD_INIT, "/bin/bash", "-c",
                          "(exec -a ray::Leftover setsid sleep 300 &); sleep 0.3; exit 3"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 3
    (line,) = [line for line in run.stderr.splitlines() if line.startswith(ENDED)]
    assert "sleep" in line
    pids = [int(word) for word in line.rsplit(":", 1)[1].replace(",", " ").split() if word.isdigit()]
    assert pids and not [pid for pid in pids if psutil.pid_exists(pid) and
                         psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def test_sigterm_reaches_the_command():
    init = subprocess.Popen([sys.executable, POD_INIT, "/bin/bash", "-c", "trap 'exit 7' TERM; sleep 30 & wait"],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20  # the trap set: bash has started its `sleep`
        while not [c for c in psutil.Process(init.pid).children(recursive=True) if c.name() == "sleep"]:
            assert time.monotonic() < deadline, "the command did not start"
            time.sleep(0.1)
        init.send_signal(signal.SIGTERM)
        assert init.wait(timeout=20) == 7
        assert ENDED in init.stderr.read()  # the trap's `sleep` was left: killed
    finally:
        if init.poll() is None:
            init.kill()
