"""How vLLM's CPU backend is run, by a replica and by `paliserve profile` alike.

vLLM's CPU backend runs the model in a worker process of its own, beside its engine core process.
The worker binds itself to the cores vLLM picks (all but one, chosen without regard to Ray's CPU
accounting: every replica on a node picks the same cores), and both processes spin-wait on each
other between messages (`sched_yield`), so a replica keeps about a tenth of a core busy with no
request, and under load the spinning takes the cycles the front end needs. On a 2-core machine
vLLM's own server spent 14.3-15.0 ms of CPU on each of the tiny model's requests that way and
9.9-10.1 ms without it (benchmarks/overhead.py runs 8-10, README Benchmarks).

With vLLM's multiprocessing off, its CPU platform keeps the single-process executor, as on one
GPU: the model runs inside the engine core process (AsyncLLM still starts that process apart from
the front end), which blocks on its input queue when it has nothing to do. Its threads are as many
as vLLM gives its worker (`autoscale.host_probe.engine_threads`, which the planner's host probe
measures with too: one per physical core of the first NUMA node this process may use, less one for
the scheduler and the front end; VLLM_CPU_OMP_THREADS_BIND and VLLM_CPU_NUM_OF_RESERVED_CPU
count), unbound. The engine core process is spawned, not forked, so that it takes that
count from its environment: a forked one keeps the threads of a parent whose torch started before
(`paliserve profile`: a batch-1 decode step of 3B-224 took 0.44 s there against 0.37 s served).
A replica's is spawned anyway (vLLM spawns from inside a Ray actor). A plan's `env` that sets any
of these keeps its own value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from autoscale.host_probe import engine_threads

MULTIPROCESSING = "VLLM_ENABLE_V1_MULTIPROCESSING"
THREADS = "OMP_NUM_THREADS"
START_METHOD = "VLLM_WORKER_MULTIPROC_METHOD"


def cpu_engine_env(given: Mapping[str, str], threads: int | None = None) -> dict[str, str]:
    """The settings a CPU engine runs with that `given` (a plan's `env`) does not set itself."""
    threads = engine_threads({**os.environ, **given}) if threads is None else threads
    settings = {MULTIPROCESSING: "0", THREADS: str(threads), START_METHOD: "spawn"}
    return {name: value for name, value in settings.items() if name not in given}
