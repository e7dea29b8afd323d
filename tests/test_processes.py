"""Stopping the services paliserve starts (Prometheus, the quota store, a node's process tree) by PID."""

from __future__ import annotations

import subprocess
import sys
import time

from serve.cluster import stop_process_tree
from serve.processes import stop_service


def test_a_zombie_left_by_another_parent_counts_as_stopped():
    # The quota-store test restarts redis-server from the test process; `paliserve down` then
    # stops a process that is not its child, which stays a zombie until the test reaps it.
    # Waiting for it to vanish took 15 s and raised, and `down` never reached Ray.
    import psutil

    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, time; p = subprocess.Popen(['sleep', '30']); "
         "print(p.pid, flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        not_our_child = int(parent.stdout.readline())
        started = time.monotonic()
        stop_service(not_our_child, lambda proc: True, grace_s=10)
        assert time.monotonic() - started < 2
        assert psutil.Process(not_our_child).status() == psutil.STATUS_ZOMBIE  # its parent has not reaped it
    finally:
        parent.kill()
        parent.wait()


def test_a_process_that_is_no_longer_ours_is_left_alone():
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        stop_service(stranger.pid, lambda proc: False)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_a_process_tree_whose_root_is_no_longer_ours_is_left_alone():
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        stop_process_tree(stranger.pid, grace_s=2, is_ours=lambda proc: False)
        assert stranger.poll() is None
        stop_process_tree(stranger.pid, grace_s=2, is_ours=lambda proc: proc.pid == stranger.pid)  # ours after all
        assert stranger.wait(timeout=5) is not None
    finally:
        stranger.kill()
        stranger.wait()
