"""The settings a CPU engine replica runs vLLM with (paliserve/cpu_engine.py); `tests/test_up.py`
checks them on the running engine process."""

from paliserve.cpu_engine import MULTIPROCESSING, START_METHOD, THREADS, cpu_engine_env


def test_one_process_on_the_threads_vllm_gives_its_worker():
    from autoscale.host_probe import engine_threads

    assert cpu_engine_env({}, threads=15) == {MULTIPROCESSING: "0", THREADS: "15", START_METHOD: "spawn"}
    assert cpu_engine_env({})[THREADS] == str(engine_threads())  # what the host probe measures with
    reserved_none = cpu_engine_env({"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"})[THREADS]
    assert int(reserved_none) >= int(cpu_engine_env({})[THREADS])  # the plan's env counts


def test_a_plans_env_keeps_its_own_values():
    given = {THREADS: "4", START_METHOD: "fork", "VLLM_CPU_KVCACHE_SPACE": "1"}
    assert cpu_engine_env(given, threads=16) == {MULTIPROCESSING: "0"}
    assert cpu_engine_env({MULTIPROCESSING: "1"}, threads=7) == {THREADS: "7", START_METHOD: "spawn"}


def test_the_spawned_engine_process_takes_its_thread_count_from_the_environment(tmp_path):
    """What the start method is for: a forked child keeps its parent's torch threads whatever
    OMP_NUM_THREADS says; a spawned one reads it."""
    import subprocess
    import sys

    script = (
        "import multiprocessing as mp, os, torch\n"
        "def threads(q): q.put(torch.get_num_threads())\n"
        "if __name__ == '__main__':\n"
        "    torch.set_num_threads(2)\n"
        "    os.environ['OMP_NUM_THREADS'] = '1'\n"
        "    for method in ('fork', 'spawn'):\n"
        "        ctx = mp.get_context(method); q = ctx.Queue(); p = ctx.Process(target=threads, args=(q,))\n"
        "        p.start(); print(method, q.get(timeout=60)); p.join(60)\n"
    )
    (tmp_path / "threads.py").write_text(script)
    out = subprocess.run([sys.executable, str(tmp_path / "threads.py")], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["fork", "2", "spawn", "1"], out.stdout + out.stderr
