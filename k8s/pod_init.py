"""A rehearsal container's init (k8s/rehearsal.py): what a container's PID namespace does, on a
host where every pod is a process tree.

`python pod_init.py CMD...` becomes its processes' subreaper (prctl PR_SET_CHILD_SUBREAPER: every
process of the container that loses its parent, as Ray's daemons and HAProxy do when `ray start`
exits, is reparented here, not to the host's init), runs CMD, forwards SIGTERM and SIGINT to it (the
kubelet's stop of a container), and when CMD exits SIGKILLs every process still in the tree and reaps
it, as the kernel does when a PID namespace's init exits, then exits with CMD's status. It finds them
by PID (its descendants), whatever they renamed themselves to: Ray's processes rewrite their
command lines and environments with their titles (`ray::ServeController`, `ray::DashboardAgent`),
so neither names the pod. The last line it writes to the container's log says what was left.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

import psutil

PR_SET_CHILD_SUBREAPER = 36
ENDED = "[pod-init] left at the container's end, killed:"


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_the_rest(timeout_s: float = 10) -> list[str]:
    """SIGKILL every descendant until none is left (bounded), reaping them; their names."""
    killed: dict[int, str] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reap()
        left = []
        for proc in psutil.Process().children(recursive=True):
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    killed.setdefault(proc.pid, proc.name())
                    left.append(proc)
            except psutil.NoSuchProcess:
                pass
        if not left:
            break
        for proc in left:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.1)
    reap()
    return [f"{pid} {name}" for pid, name in sorted(killed.items())]


def main(argv: list[str]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"[pod-init] prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}", file=sys.stderr)
        return 127
    pending: list[int] = []  # a stop that came before the command started
    child: subprocess.Popen | None = None

    def forward(signum, _frame):
        if child is None:
            pending.append(signum)
        else:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    child = subprocess.Popen(argv)
    for signum in pending:
        child.send_signal(signum)
    code = child.wait()
    killed = kill_the_rest()
    print(f"{ENDED} {len(killed)}: {', '.join(killed)}", file=sys.stderr, flush=True)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
