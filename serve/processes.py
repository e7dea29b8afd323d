"""Starting the long-running processes paliserve owns (Ray, Prometheus)."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, ClassVar


def start_service(cmd: list[str], log: IO[bytes], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `cmd` in a process group of its own, so the terminal's Ctrl-C and hang-up do not
    reach it, but in the caller's session.

    Where the kernel schedules by session (autogroup: hosts without systemd's cgroups, like the
    test machines), a busy engine in a session of its own left the caller's clients runnable
    but unscheduled for up to 4 s at a time, which read as server latency in tests and load
    tests. A Prometheus in a session of its own, once Ray shared the caller's, was then seen to
    lack series that Ray's export had (the autoscaling test's desired-replicas gauge), as if its
    scrapes were starved the same way. In one session, tasks share the CPU task by task (README,
    Known limitations)."""
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                            process_group=0)  # fmt: skip


@dataclass
class ServiceInfo:
    """A service paliserve started (Prometheus, the quota store): its PID, loopback port,
    directory (holding `CONFIG_NAME`) and log, as `cluster.json` records it."""

    CONFIG_NAME: ClassVar[str]
    pid: int
    port: int
    data_dir: str
    log_file: str

    @property
    def config_file(self) -> str:
        return str(Path(self.data_dir) / self.CONFIG_NAME)


def stop_service(pid: int, is_ours, grace_s: float = 10) -> None:
    """SIGTERM the process `pid` if `is_ours(psutil.Process)` says it still runs what we started,
    wait up to `grace_s`, then SIGKILL. A process that is not our child (restarted by someone
    else) stays a zombie until its parent reaps it: that counts as stopped."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if not is_ours(proc):
            return
        proc.terminate()
        if not _ended(proc, grace_s):
            proc.kill()
            _ended(proc, 5)
    except psutil.NoSuchProcess:
        pass


def _ended(proc, timeout_s: float) -> bool:
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
            proc.wait(0.1)
            return True
        except psutil.TimeoutExpired:
            continue
        except psutil.NoSuchProcess:
            return True
    return False
