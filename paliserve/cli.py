"""The `paliserve` command."""

from __future__ import annotations

import base64
import io
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import psutil
import typer
import yaml
from rich.console import Console

from autoscale.cli import register as register_planner_commands
from k8s.cli import register as register_k8s_commands
from loadtests.cli import register as register_loadtest_commands
from paliserve import local
from paliserve.spec import Plan
from paliserve.tenants import prepare_local_tenants, publish_local_tenants, register as register_tenant_commands
from paliserve.usage import register as register_usage_commands

APP_NAME = "paliserve"
app = typer.Typer(help="Serve PaliGemma for many tenants on Ray Serve and vLLM.", no_args_is_help=True)
console = Console(stderr=True)
register_planner_commands(app)
register_k8s_commands(app)
register_loadtest_commands(app)


def _state_file() -> Path:
    return local.cache_dir() / "cluster.json"


register_usage_commands(app, _state_file)  # `paliserve usage` reads the running cluster's Prometheus
register_tenant_commands(app, _state_file, lambda message: _error(message))  # `paliserve tenants apply|list`


@app.command("tiny-model")
def tiny_model(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the checkpoint to.")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a tiny random-weight PaliGemma (loads in transformers and vLLM) for offline use."""
    from paliserve.tiny_model import build_tiny_model

    path = build_tiny_model(out_dir, seed=seed)
    console.print(f"wrote tiny PaliGemma to [bold]{path}[/]")


@app.command("random-checkpoint")
def random_checkpoint(
    model: Annotated[str, typer.Argument(help="Catalog id, e.g. paligemma-3b-pt-224 or paligemma2-10b-mix-448.")],
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the checkpoint to.")],
    dtype: Annotated[str, typer.Option(help="bfloat16, float16 or float32.")] = "bfloat16",
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a deterministic random-weight checkpoint with a catalog model's exact architecture
    (hub key names, sharded safetensors, the real tokenizer layout), tensor by tensor."""
    import time

    from paliserve.random_checkpoint import write_random_checkpoint

    started = time.monotonic()
    try:
        path = write_random_checkpoint(model, out_dir, dtype=dtype, seed=seed,
                                       say=lambda line: console.print(line, markup=False, highlight=False))  # fmt: skip
    except ValueError as exc:
        _error(f"error: {exc}")
        raise typer.Exit(2) from None
    console.print(f"wrote random {model} ({dtype}) to [bold]{path}[/] in {time.monotonic() - started:.0f} s")


@app.command("profile-endpoint")
def profile_endpoint(
    plan: Annotated[Path, typer.Argument(help="The plan the endpoint serves (one replica of the profile's model).")],
    host: Annotated[str, typer.Option(help="Base URL of the endpoint, e.g. http://127.0.0.1:8000.")],
    profile: Annotated[Path, typer.Option(help="Engine profile from `paliserve profile` to add serving points to.")],
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="Profile to write (default: --profile, in place).")] = None,
    concurrency: Annotated[str, typer.Option(help="Comma-separated concurrencies to measure.")] = "1,2,4,8,16",
    seconds: Annotated[float, typer.Option(help="Seconds of load at each concurrency, per pass.")] = 20,
    passes: Annotated[int, typer.Option(help="Sweeps over the concurrencies; each point combines them.")] = 2,
    tenant: Annotated[Optional[str], typer.Option(help="Tenant whose workload is sent (default: the first on the model).")] = None,
    keys: Annotated[Optional[Path], typer.Option(help="YAML/JSON mapping tenant -> API key.")] = None,
    work: Annotated[Optional[Path], typer.Option(help="Directory for each point's load-test report.")] = None,
) -> None:
    """Measure the whole serving path through a live endpoint at several concurrencies (the load
    test's own client) and add it to a profile as serving points, which the planner then adds to
    its engine model."""
    import tempfile

    from autoscale.loading import load_plan
    from autoscale.profile import load_profile, save_profile
    from loadtests.traffic import PlanError
    from paliserve.endpoint_profile import EndpointProfileError, measure_serving

    try:
        parsed = load_plan(plan)
        engine = load_profile(profile)
        levels = [int(x) for x in concurrency.split(",") if x.strip()]
        workdir = work or Path(tempfile.mkdtemp(prefix="paliserve-endpoint-profile-"))
        result = measure_serving(parsed, engine, host, levels, seconds, workdir, keys, tenant,
                                 say=lambda line: console.print(line, markup=False, highlight=False),
                                 passes=passes)  # fmt: skip
    except (EndpointProfileError, PlanError, ValueError, OSError) as exc:
        _error(f"error: {exc}")
        raise typer.Exit(2) from None
    target = out or profile
    save_profile(result, target)
    console.print(f"wrote {target}: {len(result.serving)} serving points (reports in {workdir})", highlight=False)


def _load_plan(plan: Optional[Path], model: Optional[str], device: str, max_model_len: int, dtype: Optional[str] = None) -> Plan:
    if dtype is not None and (plan is not None or model is None):
        _error("paliserve cannot start: --dtype applies to --model (a plan, and the embedded default, set their own)")
        raise typer.Exit(2)
    if plan is not None:
        return Plan.model_validate(yaml.safe_load(plan.read_text()))
    if device == "auto":
        device = "gpu" if local.gpu_count() > 0 else "cpu"
    if model is None:
        return local.default_plan()
    served = model.rstrip("/").split("/")[-1] if Path(model).exists() else model
    if device == "cpu" and dtype is None:
        chosen, why = local.cpu_dtype()
        console.print(f"dtype {chosen}: {why} (--dtype to choose)", markup=False, highlight=False)
    return local.single_model_plan(model, served, device, max_model_len=max_model_len, dtype=dtype)


def _curl_example(url: str, model: str, needs_key: bool = False) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (28, 28), (200, 40, 40)).save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    body = (
        '{"model": "%s", "max_tokens": 16, "messages": [{"role": "user", "content": ['
        '{"type": "text", "text": "caption en"}, '
        '{"type": "image_url", "image_url": {"url": "data:image/png;base64,%s"}}]}]}' % (model, data)
    )
    auth = " -H \"Authorization: Bearer $PALISERVE_KEY\"" if needs_key else ""
    return f"curl -s {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} -d '{body}'"


@app.command()
def up(
    model: Annotated[Optional[str], typer.Option(help="Hub id or local path; default: the embedded tiny model.")] = None,
    plan: Annotated[Optional[Path], typer.Option(help="A plan file (from `paliserve plan`).")] = None,
    port: Annotated[int, typer.Option(help="HTTP port on 127.0.0.1.")] = 8000,
    device: Annotated[str, typer.Option(help="auto, cpu or gpu.")] = "auto",
    max_model_len: Annotated[int, typer.Option(help="Context length for --model.")] = 2048,
    dtype: Annotated[Optional[str], typer.Option(
        help="bfloat16, float16 or float32 for --model (default on a CPU: bfloat16 where it has it, else float32; on GPUs: the checkpoint's).")] = None,
    memory_check: Annotated[bool, typer.Option(
        help="Refuse to start when the planner's memory model says this machine cannot hold the plan.")] = True,
    num_gpus: Annotated[Optional[int], typer.Option(help="GPUs Ray may use (default: detected).")] = None,
    detach: Annotated[bool, typer.Option(help="Return once serving; stop later with `paliserve down`.")] = False,
    prometheus: Annotated[bool, typer.Option(help="Start a Prometheus server scraping the cluster.")] = True,
    host: Annotated[str, typer.Option(
        help="Address every node's HTTP ingress binds (0.0.0.0 for a cluster across machines).")] = "127.0.0.1",
    node_ip_address: Annotated[str, typer.Option(
        help="This head's address, which other machines join (`paliserve join`).")] = "127.0.0.1",
    token_file: Annotated[Optional[Path], typer.Option(
        help="Ray's token for the cluster (a file, mode 600), e.g. one already copied to the other machines; default: a fresh one.")] = None,
) -> None:
    """Start a Ray cluster's head here and serve PaliGemma until Ctrl-C (or `paliserve down` with
    --detach); other machines add their GPUs with `paliserve join`."""
    from serve.app import build_app
    from serve.cluster import LocalCluster, read_state, wait_until_healthy, write_state
    from serve.preflight import check_plan
    from serve.tenancy.identity import is_loopback

    existing = read_state(_state_file())
    if existing is not None and psutil.pid_exists(existing.pid):
        console.print(f"[red]paliserve is already running at {existing.url} (pid {existing.pid}); run `paliserve down`.[/]")
        raise typer.Exit(1)
    if dtype is not None and dtype not in ("bfloat16", "float16", "float32"):
        _error(f"paliserve cannot start: --dtype {dtype}: expected bfloat16, float16 or float32")
        raise typer.Exit(2)
    if token_file is not None:
        from serve.nodes import JoinRefused, check_token_file

        try:
            token_file = Path(check_token_file(str(token_file)))
        except JoinRefused as exc:
            _error(f"paliserve cannot start: {exc}")
            raise typer.Exit(2) from None
    serving_plan = _load_plan(plan, model, device, max_model_len, dtype)
    if not serving_plan.tenants and not is_loopback(host):
        # without tenants nobody needs a key, and behind HAProxy every client looks local
        _error(f"paliserve cannot start: --host {host} would open serving to the network, and the plan has no "
               "tenants, so no API keys: give the plan tenants (`paliserve plan` of a spec with them) or keep "
               "--host 127.0.0.1")  # fmt: skip
        raise typer.Exit(2)
    problems = check_plan(serving_plan)
    if problems:
        for problem in problems:
            _error(f"paliserve cannot start: {problem}")
        raise typer.Exit(2)
    if memory_check:
        from serve.preflight import Machine, check_memory

        short = check_memory(serving_plan, Machine.here())
        for problem in short:
            _error(f"paliserve cannot start: {problem} (--no-memory-check starts anyway)")
        if short:
            raise typer.Exit(2)
    metrics_server = _local_prometheus() if prometheus else None
    cluster = LocalCluster(
        http_port=port,
        num_gpus=num_gpus,
        metrics_targets=metrics_server is not None,
        node_ip=node_ip_address,
        http_host=host,
        token_file=str(token_file) if token_file else None,
        # where the Serve controller's autoscaling policy finds Prometheus
        env={**_startup_retry_env(), **({"RAY_PROMETHEUS_HOST": metrics_server.url} if metrics_server else {})},
    )
    try:
        quota_store = _local_quota_store(serving_plan, cluster.temp_dir, node_ip_address)
    except typer.Exit:  # nothing started: leave no temp dir behind
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)
        raise
    if quota_store is not None:  # the gateways find it (and its password file) in their environment
        cluster.env.update(quota_store.configure().env())
    # the gateways follow a tenants directory in the cluster's temp dir (`paliserve tenants apply`)
    cluster.env.update(prepare_local_tenants(cluster.temp_dir, serving_plan))
    signal.signal(signal.SIGTERM, _interrupted)  # stopped while starting: clean up as on Ctrl-C
    try:
        if quota_store is not None:
            with console.status("starting the quota store (redis-server)"):
                quota_store.start()
        with console.status("starting Ray"):
            info = cluster.start()
            _publish_for_nodes(info, quota_store, serving_plan)  # before any node can join
        console.print(f"other machines join with: paliserve join {info.address} --token-file <a copy of "
                      f"{info.auth_token_path}>", markup=False, highlight=False, soft_wrap=True)  # fmt: skip
        if metrics_server is not None:
            metrics_server.start(info.temp_dir)
        cluster.connect()
        names = ", ".join(d.model_name for d in serving_plan.deployments)
        with console.status(f"starting the engine for {names} (first start takes a minute)"):
            cluster.serve(build_app(serving_plan), name=APP_NAME, wait=False)
            wait_until_healthy(info.url, app=APP_NAME)
        _report_placement(serving_plan)
    except BaseException as exc:
        reason = _start_failure(exc, serving_plan, cluster.temp_dir)
        logs = _keep_logs(cluster.temp_dir)
        if metrics_server is not None:
            metrics_server.stop()
        if quota_store is not None:
            quota_store.stop()
        cluster.stop()
        _error(f"paliserve failed to start: {reason}")
        console.print(f"Ray's logs: {logs}", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    write_state(_state_file(), info, metrics_server.info if metrics_server else None, quota_store and quota_store.info)
    first = serving_plan.deployments[0].model_name
    console.print(f"[green]paliserve is serving[/] {names} at [bold]{info.url}[/]  (OpenAPI: {info.url}/docs)")
    print(_curl_example(info.url, first, needs_key=bool(serving_plan.tenants)), flush=True)
    if metrics_server is not None:
        console.print(f"Prometheus at [bold]{metrics_server.url}[/] (scraping Ray every {metrics_server.scrape_interval_s:g} s)")
    if quota_store is not None:
        console.print(f"quota store (redis-server, pid {quota_store.info.pid}) at {quota_store.info.host}:{quota_store.port}")
    if detach:
        import ray

        ray.shutdown()
        console.print("detached; stop it with `paliserve down`")
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    console.print("press Ctrl-C to stop")
    stop.wait()
    console.print("stopping…")
    if metrics_server is not None:
        metrics_server.stop()
    if quota_store is not None:
        quota_store.stop()
    cluster.stop()
    _state_file().unlink(missing_ok=True)


def _report_placement(plan: Plan) -> None:
    """Say where the replicas are, node by node, when the plan's layout spans several nodes."""
    from serve.placement import placed_per_node, placement_mismatch, planned_per_node

    planned = planned_per_node(plan)
    if len(planned) < 2:
        return
    placed = placed_per_node(APP_NAME, {d.name for d in plan.deployments})
    for ip, counts in sorted(placed.items()):
        console.print(f"node {ip}: " + ", ".join(f"{n} x{c}" for n, c in sorted(counts.items())), highlight=False)
    mismatch = placement_mismatch(planned, placed)
    if mismatch:
        console.print(f"[yellow]replicas are not placed as planned: {mismatch}[/]", highlight=False)


def _node_state_file() -> Path:
    return local.cache_dir() / "node.json"


@app.command()
def join(
    head: Annotated[str, typer.Argument(help="The head's Ray address, HOST:PORT (`paliserve up` prints it).")],
    token_file: Annotated[Optional[Path], typer.Option(help="A copy of the head's token file (mode 600).")] = None,
    node_ip_address: Annotated[Optional[str], typer.Option(
        help="This node's address that the others reach (default: this machine's address toward the head).")] = None,
    port: Annotated[int, typer.Option(help="HTTP port of this node's ingress (HAProxy).")] = 8000,
    num_gpus: Annotated[Optional[int], typer.Option(help="GPUs Ray may use here (default: detected).")] = None,
    num_cpus: Annotated[Optional[int], typer.Option(help="CPUs Ray may use here (default: detected).")] = None,
) -> None:
    """Join this machine to a cluster started with `paliserve up` on another (its head), with its
    GPUs; it serves HTTP on --port once it holds a replica. `paliserve down` here leaves the cluster."""
    import ray

    from serve.cluster import read_state
    from serve.cluster_kv import ClusterKV
    from serve.nodes import (JoinRefused, WorkerNode, check_quota_store, check_reachable, check_token_file, head_metadata,
                             head_services, parse_head, read_node_state, this_python, version_mismatch,
                             write_node_state)  # fmt: skip

    for state in (read_node_state(_node_state_file()), read_state(_state_file())):
        if state is not None and psutil.pid_exists(state.pid):
            _error(f"paliserve cannot join: this machine already runs paliserve (pid {state.pid}); run `paliserve down`")
            raise typer.Exit(1)
    try:
        host, gcs_port = parse_head(head)
        token = check_token_file(str(token_file) if token_file else None)
        local_ip = check_reachable(host, gcs_port)
        mismatch = version_mismatch(head_metadata(head, token), ray.__version__, this_python())
        if mismatch:
            raise JoinRefused(mismatch)
        # the head's quota store and live tenants, for this node's replicas (its environment)
        services = head_services(ClusterKV.at(head, token))
        if services.quota_url:
            check_quota_store(services.quota_url, services.quota_ca)
    except JoinRefused as exc:
        _error(f"paliserve cannot join: {exc}")
        raise typer.Exit(2) from None
    node = WorkerNode(head, token, node_ip_address or local_ip, http_port=port, num_gpus=num_gpus, num_cpus=num_cpus)
    node.env.update(services.env(node.temp_dir))
    try:
        with console.status(f"joining {head}"):
            info = node.start()
    except JoinRefused as exc:
        _error(f"paliserve cannot join: {exc}")
        raise typer.Exit(1) from None
    write_node_state(_node_state_file(), info)
    console.print(f"[green]joined[/] {head} as node {info.node_ip} (pid {info.pid}); its ingress serves at "
                  f"{info.url} once it holds a replica; leave with `paliserve down`", highlight=False)  # fmt: skip
    shared = [what for what, has in (("quota store", services.quota_url), ("live tenants", services.tenants)) if has]
    if shared:
        console.print(f"its replicas share the head's {' and '.join(shared)}", highlight=False)


def _error(message: str) -> None:
    console.print(message, style="red", markup=False, highlight=False, soft_wrap=True)


def _startup_retry_env() -> dict[str, str]:
    """Serve retries a replica that fails to start 3 times by default; a vLLM engine that fails to
    start (bad checkpoint, bad arguments, too little memory) fails the same way again, and each
    try costs a full engine start. One try per replica, unless the caller's environment says."""
    import os

    return {"RAY_SERVE_MAX_PER_REPLICA_RETRY_COUNT": os.environ.get("RAY_SERVE_MAX_PER_REPLICA_RETRY_COUNT", "1")}


def _interrupted(*_) -> None:
    raise KeyboardInterrupt


def _start_failure(exc: BaseException, plan: Plan, temp_dir: str) -> str:
    """What failed, naming the checkpoint of a failed engine and the root cause vLLM logged."""
    from serve.cluster import DeployFailed, engine_root_cause, last_exception_line

    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"

    if not isinstance(exc, DeployFailed):
        return str(exc) or type(exc).__name__
    engines = {d.name: d for d in plan.deployments}
    reasons = []
    for name in exc.deployments or ["?"]:
        deployment = engines.get(name)
        if deployment is None:
            reasons.append(f"deployment {name} failed: {last_exception_line(str(exc))}")
            continue
        cause = engine_root_cause(temp_dir) or last_exception_line(str(exc))
        reasons.append(f"the engine for {deployment.model_name} (checkpoint {deployment.engine_args.model}) failed to start: {cause}")
    return "; ".join(reasons)


def _keep_logs(temp_dir: str) -> Path:
    """Copy the cluster's logs out of its temp dir (removed when the cluster stops)."""
    import shutil

    dest = local.cache_dir() / "last-failed-start"
    shutil.rmtree(dest, ignore_errors=True)
    try:
        shutil.copytree(Path(temp_dir, "session_latest", "logs"), dest)
    except (OSError, shutil.Error):
        pass
    return dest


def _local_prometheus():
    from serve.cluster import free_port
    from serve.prometheus import LocalPrometheus, find_prometheus

    binary = find_prometheus()
    if binary is None:
        console.print(
            "[yellow]prometheus is not installed (Debian package `prometheus`): serving without it; "
            "the autoscaling policy falls back to ongoing requests[/]"
        )
        return None
    return LocalPrometheus(binary, port=free_port())


def _publish_for_nodes(info, quota_store, plan: Plan) -> None:
    """What replicas on joined nodes need and do not inherit from the head's environment: the
    quota store's address and password, and the live tenant set, in the cluster's GCS, which only
    holders of the cluster's token can read (serve/cluster_kv.py says why there)."""
    from serve.cluster_kv import ClusterKV

    kv = ClusterKV.at(info.address, info.auth_token_path)
    if quota_store is not None:
        quota_store.info.publish(kv)
    publish_local_tenants(kv, plan)


def _local_quota_store(plan: Plan, temp_dir: str, node_ip: str = "127.0.0.1"):
    """The quota store when a tenant has limits or several ingress replicas share the tenants' fair
    shares: redis-server on a free port of 127.0.0.1, and of the head's address (`node_ip`) when
    it has one that other machines join, its files in the cluster's temp dir. Without the binary
    the limits could not be enforced: refuse to start."""
    from serve.cluster import free_port
    from serve.redis_server import LocalRedis, find_redis_server

    if not plan.needs_quota_store():
        return None
    binary = find_redis_server()
    if binary is None:
        _error("paliserve cannot start: tenants have limits or fair shares across ingress replicas, which need the "
               "quota store, and redis-server is not installed (Debian package `redis-server`)")  # fmt: skip
        raise typer.Exit(2)
    return LocalRedis(binary, port=free_port(), data_dir=str(Path(temp_dir) / "quota-store"), host=node_ip)


@app.command()
def down() -> None:
    """Stop the cluster started by `paliserve up --detach`; on a node started by `paliserve join`, leave its cluster."""
    from serve.cluster import LocalCluster, read_prometheus_state, read_quota_store_state, read_state
    from serve.nodes import WorkerNode, read_node_state
    from serve.prometheus import stop_prometheus
    from serve.redis_server import stop_redis

    joined = read_node_state(_node_state_file())
    if joined is not None:
        node = WorkerNode(joined.head, "", joined.node_ip, temp_dir=joined.temp_dir)
        node.info = joined
        node.stop()  # this node's process tree only: the head and the other nodes carry on
        _node_state_file().unlink(missing_ok=True)
        console.print(f"left the cluster at {joined.head}")
        return

    from serve.cluster import runs_ray_start

    info = read_state(_state_file())
    metrics_server = read_prometheus_state(_state_file())
    if metrics_server is not None:
        stop_prometheus(metrics_server)
    quota_store = read_quota_store_state(_state_file())
    if quota_store is not None:
        stop_redis(quota_store)
    if info is None or not _is_ours(info.pid, runs_ray_start(info.temp_dir)):
        # a recorded PID that runs something else now (the head stopped, the machine rebooted) is not signalled
        console.print("paliserve is not running")
        if info is not None:
            shutil.rmtree(info.temp_dir, ignore_errors=True)
        _state_file().unlink(missing_ok=True)
        return
    cluster = LocalCluster(http_port=info.http_port, temp_dir=info.temp_dir)
    cluster.info = info
    try:
        cluster.connect()
    except Exception as exc:  # the cluster is unreachable: still stop its processes
        console.print(f"could not connect to Ray ({exc}); stopping its processes")
    cluster.stop()
    _state_file().unlink(missing_ok=True)
    console.print("paliserve stopped")


def _is_ours(pid: int, is_ours) -> bool:
    try:
        return is_ours(psutil.Process(pid))
    except psutil.Error:
        return False


def main() -> None:  # pragma: no cover - console script shim
    app()


if __name__ == "__main__":
    sys.exit(main())
