"""Rehearse a rendered RayService on this machine: the KubeRay operator's part, without Kubernetes.

Each group's pod is started as KubeRay builds it (ray-operator/controllers/ray/common/pod.go):
the group's `rayStartParams` completed and turned into `ray start` flags the operator's way
(`complete_start_params`, `add_resource_params`, `convert_param_map`), run through bash after
`ulimit -n 65536`, with the container's env resolved (values, field, Secret and ConfigMap
references) plus the env the operator adds, the init containers run first, and the mounted
Secret, ConfigMap and emptyDir volumes materialised as files. The Serve config is then deployed
through the dashboard's REST API (`PUT /api/serve/applications/`), as the operator does.

Every pod shares this one host, so the rehearsal localises what a pod owns alone (`Localiser`):
pod paths live under a root directory (a path already under the root is kept: the tiny model's,
which the Serve config names); Ray's fixed ports (GCS, dashboard, agent, metrics, client) get a
free port each; addresses are loopback (`0.0.0.0` and the pod IP); `/tmp` (Ray's session and
HAProxy's files) is the pod's own directory. Every pod's Serve ingress listens on `podIP:<serve
port>` in Kubernetes; here the head's proxy holds the Serve config's port on 127.0.0.1 and each
worker pod's proxy a free port of its own (`RAY_SERVE_WORKER_PROXY_HTTP_PORT`, Serve's per-node
port, as `paliserve join` gives a node): `127.0.0.1:<the pod's own port>` stands in for
`<pod IP>:<serve port>` (`Pod.serve_url`). A container runs under a small init of its own
(k8s/pod_init.py, standing in for its PID namespace): every process the container leaves behind is
reparented to it, and when the container's command exits it SIGKILLs them all, by PID, as the
kernel does when a PID namespace's init exits. The serve Service is rehearsed by its endpoints only
(`Rehearsal.serve_endpoints`: the pods it selects, ready as KubeRay's probe checks them); the
KubeRay autoscaler sidecar, the probes' effects (restarts) and the other Services are not (no API
server runs here).
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import psutil
import yaml

from k8s.pod_init import ENDED
from serve.cluster import stop_process_tree

HEAD, WORKER = "head", "worker"
GCS_PORT = 6379  # utils.DefaultGcsServerPort
METRICS_PORT = 8080  # utils.DefaultMetricsPort
DASHBOARD_AGENT_LISTEN_PORT = 52365  # utils.DefaultDashboardAgentListenPort
WORKER_GCS_RECONNECT_TIMEOUT_S = "600"  # utils.DefaultWorkerRayGcsReconnectTimeoutS
SERVE_DEPLOY_PATH = "/api/serve/applications/"  # dashboardclient.DeployPathV2
BOOLEAN_EXCEPTIONS = ("log-color", "include-dashboard")  # take true/false as a value
_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
POD_INIT = str(Path(__file__).with_name("pod_init.py"))  # a container's PID namespace, here
PROXY_HEALTH_PATH = "/-/healthz"  # utils.RayServeProxyHealthPath, in KubeRay's readiness probe of RayService workers
_SUFFIXES = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


class RehearsalFailed(RuntimeError):
    pass


def quantity(text: str) -> int:
    """A Kubernetes quantity as `resource.Quantity.Value()` gives it: an integer, rounded up."""
    match = _QUANTITY.match(str(text).strip())
    if not match or match.group(2) not in _SUFFIXES:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    return math.ceil(float(match.group(1)) * _SUFFIXES[match.group(2)])


def complete_start_params(params: dict[str, str], node_type: str, head_address: str | None = None,
                          autoscaling: bool = False, redis_password: bool = False) -> dict[str, str]:
    """KubeRay's setMissingRayStartParams, with the head's `no-monitor` (in-tree autoscaling) and
    `redis-password` (GCS fault tolerance with a password) the pod template adds."""
    out = dict(params)
    if node_type == WORKER:
        out.setdefault("address", head_address or f"localhost:{GCS_PORT}")
    else:
        out.setdefault("dashboard-host", "0.0.0.0")
        if autoscaling:
            out["no-monitor"] = "true"
        if redis_password:
            out["redis-password"] = "$REDIS_PASSWORD"
    out.setdefault("metrics-export-port", str(METRICS_PORT))
    out["block"] = "true"
    out.setdefault("dashboard-agent-listen-port", str(DASHBOARD_AGENT_LISTEN_PORT))
    return out


def add_resource_params(params: dict[str, str], resources: dict[str, Any]) -> dict[str, str]:
    """KubeRay's generateRayStartCommand: num-cpus and memory from the container's limits (CPU
    from requests when no limit), num-gpus from a limit whose name ends in `gpu`."""
    out = dict(params)
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    if "num-cpus" not in out:
        cpu = limits.get("cpu") or requests.get("cpu")
        if cpu and quantity(cpu):
            out["num-cpus"] = str(quantity(cpu))
    if "memory" not in out and limits.get("memory") and quantity(limits["memory"]):
        out["memory"] = str(quantity(limits["memory"]))
    for name in sorted(limits):
        if "num-gpus" not in out and name.endswith("gpu") and quantity(limits[name]):
            out["num-gpus"] = str(quantity(limits[name]))
    return out


def convert_param_map(params: dict[str, str]) -> list[str]:
    """KubeRay's convertParamMap: keys sorted; `true` is a bare switch, `false` is left out
    (except for options that take true/false as a value); anything else `--key=value`."""
    flags = []
    for key in sorted(params):
        value = str(params[key])
        if value.lower() in ("true", "false") and key not in BOOLEAN_EXCEPTIONS:
            if value.lower() == "true":
                flags.append(f"--{key}")
        else:
            flags.append(f"--{key}={value}")
    return flags


def ray_start_command(node_type: str, params: dict[str, str]) -> str:
    """The container's shell command line, as KubeRay sets it (`ulimit -n 65536; ray start ...`)."""
    head = " --head" if node_type == HEAD else ""
    return f"ulimit -n 65536; ray start{head} {' '.join(convert_param_map(params))}"


def operator_env(node_type: str, cluster: str, group: str, pod_name: str, head_host: str, head_port: str,
                 start_command: str, auth_token: str | None, gcs_ft: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The env KubeRay appends to the Ray container of a RayService's pod (setContainerEnvVars,
    configureGCSFaultTolerance, token authentication); entries the container sets win."""
    ip = "127.0.0.1" if node_type == HEAD else head_host  # utils.LOCAL_HOST for the head
    env = []
    if node_type == WORKER:
        env += [{"name": "FQ_RAY_IP", "value": head_host}, {"name": "RAY_IP", "value": head_host.split(".")[0]}]
    env += [
        {"name": "RAY_CLUSTER_NAME", "value": cluster},
        {"name": "RAY_CLOUD_INSTANCE_ID", "value": pod_name},
        {"name": "RAY_NODE_TYPE_NAME", "value": group},
        {"name": "KUBERAY_GEN_RAY_START_CMD", "value": start_command},
        {"name": "RAY_PORT", "value": head_port},
        {"name": "RAY_TIMEOUT_MS_TASK_WAIT_FOR_DEATH_INFO", "value": "0"},
        {"name": "RAY_GCS_SERVER_REQUEST_TIMEOUT_SECONDS", "value": "5"},
        {"name": "RAY_SERVE_KV_TIMEOUT_S", "value": "5"},
        {"name": "RAY_ADDRESS", "value": f"{ip}:{head_port}"},
        {"name": "RAY_USAGE_STATS_KUBERAY_IN_USE", "value": "1"},
        {"name": "RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE", "value": "1"},
    ]
    if auth_token is not None:
        env += [{"name": "RAY_AUTH_MODE", "value": "token"}, {"name": "RAY_AUTH_TOKEN", "value": auth_token}]
    if gcs_ft is not None:
        if node_type == WORKER:
            env.append({"name": "RAY_gcs_rpc_server_reconnect_timeout_s", "value": WORKER_GCS_RECONNECT_TIMEOUT_S})
        else:
            env.append({"name": "RAY_external_storage_namespace", "value": gcs_ft.get("externalStorageNamespace", cluster)})
            env.append({"name": "RAY_REDIS_ADDRESS", "value": gcs_ft["redisAddress"]})
            if "redisPassword" in gcs_ft:
                env.append({"name": "REDIS_PASSWORD", **gcs_ft["redisPassword"]})
    return env


@dataclass
class Objects:
    """What the API server would hold: Secrets and ConfigMaps by name (their data, decoded)."""

    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    configmaps: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, doc: dict[str, Any]) -> None:
        name = doc["metadata"]["name"]
        if doc["kind"] == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
            self.secrets[name] = {**data, **(doc.get("stringData") or {})}
        elif doc["kind"] == "ConfigMap":
            self.configmaps[name] = dict(doc.get("data") or {})

    def ref(self, kind: str, ref: dict[str, Any]) -> str | None:
        found = (self.secrets if kind == "secretKeyRef" else self.configmaps).get(ref["name"], {})
        if ref["key"] in found:
            return found[ref["key"]]
        if ref.get("optional"):
            return None
        raise RehearsalFailed(f"{kind} {ref['name']}/{ref['key']} does not exist and is not optional")


def resolve_env(entries: list[dict[str, Any]], objects: Objects, fields: dict[str, str]) -> dict[str, str]:
    """A container's env as the kubelet sets it (later entries of one name win; `$(VAR)` not expanded)."""
    env: dict[str, str] = {}
    for entry in entries:
        source = entry.get("valueFrom")
        if source is None:
            env[entry["name"]] = str(entry.get("value", ""))
        elif "fieldRef" in source:
            env[entry["name"]] = fields[source["fieldRef"]["fieldPath"]]
        else:
            kind = next(iter(source))
            value = objects.ref(kind, source[kind])
            if value is not None:
                env[entry["name"]] = value
    return env


class Localiser:
    """Where a pod's paths and ports are on this host (see the module's docstring)."""

    PORT_PARAMS = {"port": GCS_PORT, "dashboard-port": 8265, "metrics-export-port": METRICS_PORT,
                   "dashboard-agent-listen-port": DASHBOARD_AGENT_LISTEN_PORT,
                   "dashboard-agent-grpc-port": None, "runtime-env-agent-port": None,
                   "ray-client-server-port": 10001}

    def __init__(self, root: Path, free_port: Callable[[], int]):
        self.root = Path(root)
        self.free_port = free_port

    def path(self, pod_path: str) -> Path:
        path = Path(pod_path)
        if path.is_relative_to(self.root):
            return path
        return self.root / str(path).lstrip("/")

    def start_params(self, params: dict[str, str], node_type: str, pod_dir: Path,
                     head_address: str | None) -> tuple[dict[str, str], dict[str, int]]:
        """The completed params on this host, and pod port -> local port."""
        out, ports = dict(params), {}
        for key, default in self.PORT_PARAMS.items():
            if node_type == WORKER and key in ("port", "dashboard-port", "ray-client-server-port"):
                continue
            pod_port = int(out.get(key, default or 0))
            local = self.free_port()
            out[key] = str(local)
            if pod_port:
                ports[pod_port] = local
        if node_type == WORKER:
            out["address"] = head_address
        out = {k: ("127.0.0.1" if v == "0.0.0.0" else v) for k, v in out.items()}
        out["node-ip-address"] = "127.0.0.1"
        out["temp-dir"] = str(pod_dir / "ray")
        out["disable-usage-stats"] = "true"
        return out, ports

    def serve_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """Serve's proxies listen on every pod address: here, loopback."""
        http = config.get("http_options") or {}
        if http.get("host") == "0.0.0.0":
            config = {**config, "http_options": {**http, "host": "127.0.0.1"}}
        return config

    def env(self, env: dict[str, str]) -> dict[str, str]:
        """Env values naming pod paths (absolute paths) name the pod's files here."""
        return {k: (str(self.path(v)) if v.startswith("/") and " " not in v else v) for k, v in env.items()}

    def command(self, args: list[str]) -> list[str]:
        return [str(self.path(a)) if a.startswith("/") else a for a in args]

    def materialise(self, pod_spec: dict[str, Any], container: dict[str, Any], objects: Objects) -> None:
        """Write each mounted volume's files where the container's mounts say (here: under root)."""
        volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            volume, target = volumes[mount["name"]], self.path(mount["mountPath"])
            target.mkdir(parents=True, exist_ok=True)
            if "secret" in volume:
                files = objects.secrets.get(volume["secret"]["secretName"])
            elif "configMap" in volume:
                files = objects.configmaps.get(volume["configMap"]["name"])
            else:
                continue  # emptyDir: the directory is the volume
            if files is None:
                raise RehearsalFailed(f"volume {mount['name']} names a Secret/ConfigMap that was not rendered")
            for key, text in files.items():
                (target / key).write_text(text)


def free_port_in(low: int, high: int) -> Callable[[], int]:
    """Free loopback ports from [low, high), each handed out once."""
    import socket

    used: set[int] = set()

    def take() -> int:
        for port in range(low, high):
            if port in used:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            used.add(port)
            return port
        raise RehearsalFailed(f"no free port in {low}-{high}")

    return take


@dataclass
class Pod:
    name: str
    node_type: str
    group: str
    command: str
    env: dict[str, str]
    directory: Path
    ports: dict[int, int]
    process: subprocess.Popen | None = None
    serve_port: int | None = None  # the local port of this pod's Serve ingress (see the module's docstring)
    port_holders: list[str] = field(default_factory=list)  # what held the pod's ports at its restarts
    left_at_end: list[str] = field(default_factory=list)  # what its exited containers left, killed by their init

    @property
    def local_ports(self) -> set[int]:
        """The ports the pod's container listens on here (its `ray start` flags', its Serve port's)."""
        return {int(p) for p in re.findall(r"-port=(\d+)", self.command)} | {self.serve_port}

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.serve_port}"

    @property
    def env_temp_dir(self) -> Path:
        return self.directory / "ray"

    @property
    def log_file(self) -> Path:
        return self.directory / "container.log"


class Rehearsal:
    """Start a rendered RayService's head and one pod per worker group's `replicas`."""

    def __init__(self, rayservice: dict[str, Any], others: list[dict[str, Any]], root: Path,
                 free_port: Callable[[], int], extra_env: dict[str, str] | None = None):
        self.service = rayservice
        self.objects = Objects()
        for doc in others:
            self.objects.add(doc)
        self.local = Localiser(root, free_port)
        self.root = Path(root)
        self.extra_env = extra_env or {}  # this host's own needs (PATH to the venv's ray)
        self.token = secrets.token_hex(32)  # KubeRay's generated auth token Secret
        self.pods: list[Pod] = []

    @property
    def cluster(self) -> dict[str, Any]:
        return self.service["spec"]["rayClusterConfig"]

    @property
    def head(self) -> Pod:
        return self.pods[0]

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.head.ports[8265]}"

    def start(self, timeout_s: float = 120) -> None:
        from serve.ingress import haproxy_env

        name = self.service["metadata"]["name"]
        auth = (self.cluster.get("authOptions") or {}).get("mode") == "token"
        ft = self.cluster.get("gcsFaultToleranceOptions")
        head_spec = self.cluster["headGroupSpec"]
        head_pod = self._pod(f"{name}-head", HEAD, "headgroup", head_spec, None, auth, ft, haproxy_env)
        self._run(head_pod, timeout_s)
        head_address = f"127.0.0.1:{head_pod.ports[GCS_PORT]}"
        for group in self.cluster.get("workerGroupSpecs") or []:
            for i in range(group.get("replicas", 1)):
                pod = self._pod(f"{name}-{group['groupName']}-worker-{i}", WORKER, group["groupName"], group,
                                head_address, auth, ft, haproxy_env)
                self._run(pod, timeout_s)

    def _pod(self, pod_name, node_type, group, spec, head_address, auth, ft, haproxy_env) -> Pod:
        template = spec["template"]["spec"]
        container = template["containers"][0]
        # short: Ray's and HAProxy's unix sockets live under it (serve/ingress.py)
        directory = Path(tempfile.mkdtemp(prefix="pr-", dir="/tmp"))
        params = complete_start_params(spec.get("rayStartParams") or {}, node_type, head_address,
                                       autoscaling=bool(self.cluster.get("enableInTreeAutoscaling")),
                                       redis_password=bool(ft and "redisPassword" in ft))
        params = add_resource_params(params, container.get("resources") or {})
        params, ports = self.local.start_params(params, node_type, directory, head_address)
        command = ray_start_command(node_type, params)
        head_port = params["port"] if node_type == HEAD else head_address.rsplit(":", 1)[1]
        fields = {"status.podIP": "127.0.0.1", "metadata.name": pod_name,
                  **{f"metadata.labels['{k}']": v for k, v in (spec["template"].get("metadata") or {}).get("labels", {}).items()}}
        added = operator_env(node_type, self.service["metadata"]["name"], group, pod_name, "127.0.0.1",
                             head_port, command, self.token if auth else None, ft)
        env = resolve_env([*(container.get("env") or []), *added], self.objects, fields)
        env = self.local.env(env)
        self.local.materialise(template, container, self.objects)
        # The pod's own /tmp (HAProxy's files and ports), the dashboard's metrics port and Serve
        # port: the head's proxy keeps the Serve config's port, a worker's proxy gets a free one
        # through Serve's per-node setting (`<pod IP>:<serve port>` in Kubernetes; one host here).
        serve_port = int((self._serve_config().get("http_options") or {}).get("port", 8000))
        own = {}
        if node_type == WORKER:
            serve_port = self.local.free_port()
            own["RAY_SERVE_WORKER_PROXY_HTTP_PORT"] = str(serve_port)
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
               **haproxy_env(str(directory), self.local.free_port), **own,
               "DASHBOARD_METRIC_PORT": str(self.local.free_port()), **self.extra_env, **env}
        for init in template.get("initContainers") or []:
            self.local.materialise(template, init, self.objects)
            run = subprocess.run(self.local.command(init["command"]), env=env, capture_output=True, text=True)
            if run.returncode:
                raise RehearsalFailed(f"{pod_name}: init container {init['name']} failed: {run.stderr.strip()[-500:]}")
        return Pod(pod_name, node_type, group, command, env, directory, ports, serve_port=serve_port)

    def _serve_config(self) -> dict[str, Any]:
        return yaml.safe_load(self.service["spec"]["serveConfigV2"])

    def _run(self, pod: Pod, timeout_s: float) -> None:
        from serve.processes import start_service

        with open(pod.log_file, "ab") as log:
            pod.process = start_service([sys.executable, POD_INIT, "/bin/bash", "-c", pod.command], log, pod.env)
        self.pods.append(pod)
        deadline = time.monotonic() + timeout_s
        while "Ray runtime started" not in pod.log_file.read_text(errors="replace"):
            if pod.process.poll() is not None or time.monotonic() > deadline:
                tail = pod.log_file.read_text(errors="replace")[-2000:]
                raise RehearsalFailed(f"{pod.name}: ray start did not come up: {tail}")
            time.sleep(0.25)

    def restart(self, pod: Pod, attempts: int = 3, timeout_s: float = 120) -> int:
        """What the kubelet does when a container exits (restartPolicy Always): run the container's
        command again in the same pod (same address, ports, files; init containers not again),
        and again after 10 s, 20 s, ... while it fails (CrashLoopBackOff). Returns the attempts."""
        if pod.process is not None and pod.process.poll() is None:
            raise RehearsalFailed(f"{pod.name}: its container is still running")
        # its init took every process of the container along (k8s/pod_init.py)
        pod.left_at_end += [line.split(":", 2)[2].strip() for line in pod.log_file.read_text(errors="replace").splitlines()
                            if line.startswith(ENDED)]
        self.pods.remove(pod)
        for attempt in range(1, attempts + 1):
            pod.log_file.rename(pod.directory / "container.previous.log")  # `kubectl logs --previous`
            # `ray start --head` refuses to start where its last cluster's address is still named
            # by a running process's --gcs-address: here the worker pods' processes, which a pod of
            # its own would not see; the record of the last address goes, the rest of /tmp/ray stays
            (pod.env_temp_dir / "ray_current_cluster").unlink(missing_ok=True)
            pod.port_holders += self.wait_ports_free(pod)
            try:
                self._run(pod, timeout_s)
                break
            except RehearsalFailed:
                self.pods.remove(pod)
                if pod.process.poll() is None:
                    stop_process_tree(pod.process.pid)
                if attempt == attempts:
                    raise
                time.sleep(10 * 2 ** (attempt - 1))
        self.pods.sort(key=lambda p: p.node_type != HEAD)
        return attempt

    def headers(self) -> dict[str, str]:
        auth = (self.cluster.get("authOptions") or {}).get("mode") == "token"
        return {"Authorization": f"Bearer {self.token}"} if auth else {}

    def deploy(self, serve_config: dict[str, Any] | None = None, timeout_s: float = 60) -> None:
        """PUT the Serve config (JSON, as the operator converts it) to the head's dashboard."""
        config = self.local.serve_config(serve_config or self._serve_config())
        deadline = time.monotonic() + timeout_s
        while True:  # the dashboard's Serve module answers some seconds after `ray start`
            try:
                r = httpx.put(self.dashboard_url + SERVE_DEPLOY_PATH, content=json.dumps(config),
                              headers={"Content-Type": "application/json", **self.headers()}, timeout=30)
                if r.is_success:
                    return
                last = f"{r.status_code} {r.text[:500]}"
            except httpx.HTTPError as error:
                last = str(error)
            if time.monotonic() > deadline:
                raise RehearsalFailed(f"PUT {SERVE_DEPLOY_PATH} failed: {last}")
            time.sleep(1)

    def applications(self) -> dict[str, Any]:
        r = httpx.get(self.dashboard_url + SERVE_DEPLOY_PATH, headers=self.headers(), timeout=10)
        r.raise_for_status()
        return r.json().get("applications") or {}

    def wait_running(self, timeout_s: float = 240) -> dict[str, Any]:
        deadline, last = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            try:
                apps = self.applications()
            except httpx.HTTPError as error:
                last = str(error)
            else:
                statuses = {name: app.get("status") for name, app in apps.items()}
                failed = {f"{n}/{d}": dep.get("message") for n, s in statuses.items() if s == "DEPLOY_FAILED"
                          for d, dep in (apps[n].get("deployments") or {}).items()} or None
                if failed:
                    raise RehearsalFailed(f"DEPLOY_FAILED: {failed}")
                if statuses and all(s == "RUNNING" for s in statuses.values()):
                    return apps
                last = {n: (apps[n].get("status"), {d: (dep.get("status"), dep.get("message"))
                                                    for d, dep in (apps[n].get("deployments") or {}).items()})
                        for n in apps}
            time.sleep(1)
        raise RehearsalFailed(f"not RUNNING within {timeout_s}s: {last}")

    def serve_endpoints(self, timeout_s: float = 2) -> list[Pod]:
        """The pods the serve Service routes to now: not the head where the RayService sets
        `excludeHeadPodFromServeSvc`, and only ready pods, as KubeRay's readiness probe of a
        RayService worker checks them (its proxy's `/-/healthz` answering 200)."""
        exclude_head = bool(self.service["spec"].get("excludeHeadPodFromServeSvc"))
        ready = []
        for pod in self.pods:
            if exclude_head and pod.node_type == HEAD:
                continue
            try:
                if httpx.get(pod.serve_url + PROXY_HEALTH_PATH, timeout=timeout_s).status_code == 200:
                    ready.append(pod)
            except httpx.HTTPError:
                pass
        return ready

    @staticmethod
    def port_holders(pod: Pod) -> list[str]:
        """Processes listening on the pod's ports on this host: `port pid name`."""
        held = []
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port in pod.local_ports:
                try:
                    held.append(f"{conn.laddr.port} {conn.pid} {psutil.Process(conn.pid).name()}")
                except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
                    held.append(f"{conn.laddr.port} {conn.pid}")
        return held

    def wait_ports_free(self, pod: Pod, timeout_s: float = 30) -> list[str]:
        """Wait until nothing listens on the pod's ports (a pod's network namespace outlives its
        containers, but only their processes can hold its ports); returns what held them."""
        first, deadline = self.port_holders(pod), time.monotonic() + timeout_s
        while self.port_holders(pod) and time.monotonic() < deadline:
            time.sleep(0.5)
        return first

    def stop(self, keep_logs: Path | None = None) -> None:
        """Stop every pod at once, as deleting them does (SIGTERM to each container's init, which
        forwards it to the command, `ray start` drains its node for up to 30 s, then the init kills
        what is left); with `keep_logs`, each pod's logs are copied there first."""
        running = [pod for pod in self.pods if pod.process is not None and pod.process.poll() is None]
        for pod in running:
            pod.process.terminate()
        deadline = time.monotonic() + 40
        for pod in running:
            try:
                pod.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for pod in reversed(self.pods):
            if pod.process is not None and pod.process.poll() is None:
                stop_process_tree(pod.process.pid, grace_s=5)
            if keep_logs is not None:
                self._keep_logs(pod, Path(keep_logs) / pod.name)
            shutil.rmtree(pod.directory, ignore_errors=True)
        self.pods = []

    @staticmethod
    def _keep_logs(pod: Pod, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for log in pod.directory.glob("container*.log"):
            shutil.copy2(log, target / log.name)
        for session in (pod.env_temp_dir).glob("session_2*"):
            if (session / "logs").is_dir():
                shutil.copytree(session / "logs", target / session.name, dirs_exist_ok=True,
                                ignore=lambda d, names: [n for n in names if (Path(d) / n).is_file()
                                                         and (Path(d) / n).stat().st_size > 2**20])


def venv_env() -> dict[str, str]:
    """The running interpreter's bin first on PATH: the `ray` and `paliserve` the image would have."""
    return {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
