"""Live tenant changes: which tenant set a running gateway serves, where it comes from, and how
it changes without restarting anything.

Sources, in order of precedence:
- a tenants directory (`PALISERVE_TENANTS_DIR`), in the layout the Kubernetes manifests mount:
  `<root>/tenant-keys/<tenant>` (the Secret: SHA-256 digests of the tenant's keys, one a line) and
  `<root>/tenants/tenants.yaml` (the ConfigMap: models, adapters, weight, limits and SLO per
  tenant, never a key). Every replica polls it (`POLL_INTERVAL_S`; stat of the resolved files,
  re-read only when one changed) and swaps its tenant set in place when it changes. Kubelet
  updates mounted Secrets and ConfigMaps by an atomic symlink swap (`..data`); a local cluster's
  `paliserve tenants apply` writes its directory the same way (`write_tenant_dir`).
- on a node that joined a local cluster from another machine (`paliserve join`), which has no
  tenants directory: the set the head publishes in the cluster's GCS (`PALISERVE_TENANTS_KV`;
  serve/cluster_kv.py), the same files as one value, written by `paliserve up` and `paliserve
  tenants apply` beside the head's directory. Replicas poll its version key (one small GCS read
  a second) and read the set only when it changed.
- the plan's tenants, which `build_app` passes as the ingress deployment's Serve `user_config`
  (never as an init argument), used when no tenants directory holds a tenant file.

A tenant set that fails validation (a bad digest, one key on two tenants, a model or adapter the
gateway does not serve, every tenant removed from a cluster that authenticates) is refused as a
whole: the gateway keeps serving the set it had and logs why. Nothing here ever prints or logs a
key or a digest: changes name tenants and fields, and listings give the number of keys.

Each replica may report what it serves to a status directory (`PALISERVE_TENANTS_STATUS_DIR`,
local clusters): one JSON file per replica, which `paliserve tenants apply` waits on and
`paliserve tenants list` reads; a replica that follows the GCS reports there instead, one key per
replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from paliserve.spec import NAME, SHA256_HEX, TenantPlan

logger = logging.getLogger("paliserve.tenancy")

SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
TENANTS_DIR_ENV = "PALISERVE_TENANTS_DIR"
STATUS_DIR_ENV = "PALISERVE_TENANTS_STATUS_DIR"
TENANTS_KV_ENV = "PALISERVE_TENANTS_KV"  # "1": follow the set the head publishes in the cluster's GCS
KV_VERSION_KEY = b"tenants/version"  # what replicas poll
KV_SET_KEY = b"tenants/set"  # {"version", "files": render_files(...)}
KV_SERVED_PREFIX = b"tenants-served/"  # + replica: its status
KEYS_DIR = "tenant-keys"  # the Secret's mount under the root
CONFIG_DIR = "tenants"  # the ConfigMap's mount under the root
CONFIG_FILE = "tenants.yaml"  # the ConfigMap's key
DATA_LINK = "..data"  # kubelet's atomic-writer link; `write_tenant_dir` uses the same scheme
POLL_INTERVAL_S = 1.0
MAX_FILE_BYTES = 1 << 20  # Kubernetes' own cap on a ConfigMap or Secret
MAX_KEY_FILES = 10_000
# What the runtime enforces of a tenant; the rest of a TenantPlan (workload, predictions) is the
# planner's and does not change what a request may do.
RUNTIME_FIELDS = ("name", "api_key_sha256", "models", "adapters", "weight", "limits", "slo")
CONFIG_FIELDS = tuple(f for f in RUNTIME_FIELDS if f != "api_key_sha256")


class TenantSetInvalid(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


# ---- the tenant set as data -------------------------------------------------------------------


def runtime_view(tenant: TenantPlan) -> dict:
    """The fields the gateway enforces, in a canonical form (key digests sorted)."""
    view = tenant.model_dump(mode="json", include=set(RUNTIME_FIELDS))
    view["api_key_sha256"] = sorted(view["api_key_sha256"])
    return view


def runtime_tenants(tenants: Iterable[TenantPlan]) -> list[TenantPlan]:
    """Tenants reduced to what the gateway enforces (what `user_config` and the files carry)."""
    return [TenantPlan.model_validate(runtime_view(t)) for t in tenants]


def tenant_set_version(tenants: Iterable[TenantPlan]) -> str:
    """A short content hash of a tenant set: equal sets give equal versions on every replica."""
    views = sorted((runtime_view(t) for t in tenants), key=lambda v: v["name"])
    return hashlib.sha256(json.dumps(views, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ServedCatalog:
    """What the gateway serves that tenants may name: base models, and adapter -> owning tenant."""

    models: tuple[str, ...]
    adapters: dict[str, str] = field(default_factory=dict)
    quotas: bool = True  # a quota store is configured: tenants may have limits

    def to_json(self) -> dict:
        return {"models": list(self.models), "adapters": dict(self.adapters), "quotas": self.quotas}

    @classmethod
    def from_json(cls, data: dict) -> ServedCatalog:
        return cls(tuple(data.get("models", [])), dict(data.get("adapters", {})), bool(data.get("quotas", True)))


def validate_tenants(tenants: list[TenantPlan], catalog: ServedCatalog | None = None,
                     current: list[TenantPlan] | None = None) -> list[str]:
    """Problems that refuse the whole set, each naming the tenant and field (never a key)."""
    problems = []
    names = [t.name for t in tenants]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"tenant {name!r} appears more than once")
    owners: dict[str, str] = {}
    for t in tenants:
        if not t.weight > 0:
            problems.append(f"tenant {t.name}: weight must be greater than 0 (got {t.weight:g})")
        if not re.match(NAME, t.name):
            problems.append(f"tenant {t.name!r}: name must match {NAME} (it names the tenant's key file)")
        for i, digest in enumerate(t.api_key_sha256):
            if not re.match(SHA256_HEX, digest):
                problems.append(f"tenant {t.name}: api_key_sha256[{i}] is not 64 lowercase hex digits")
            elif digest in owners and owners[digest] != t.name:
                problems.append(f"tenant {t.name}: api_key_sha256[{i}] is also a key of tenant {owners[digest]}")
            owners.setdefault(digest, t.name)
        if catalog is None:
            continue
        for model in t.models:
            if model not in catalog.models:
                problems.append(f"tenant {t.name}: model {model!r} is not served here (served: {', '.join(catalog.models)})")
        if not catalog.quotas and any(v is not None for v in t.limits.model_dump().values()):
            problems.append(f"tenant {t.name}: has limits, and this cluster has no quota store to enforce them "
                            "(one is started only for a plan with a tenant with limits)")
        for adapter in t.adapters:
            owner = catalog.adapters.get(adapter)
            if owner is None:
                served = ", ".join(sorted(catalog.adapters)) or "none"
                problems.append(f"tenant {t.name}: adapter {adapter!r} is not served here (served: {served})")
            elif owner != t.name:
                problems.append(f"tenant {t.name}: adapter {adapter!r} belongs to tenant {owner!r}")
    if current and not tenants:
        problems.append("the new set has no tenants: that would turn authentication off on a cluster that has it")
    return problems


@dataclass(frozen=True)
class TenantChange:
    tenant: str
    kind: str  # added, removed, changed
    fields: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.kind == "changed":
            return f"changed {self.tenant}: {', '.join(self.fields)}"
        return f"{self.kind} {self.tenant}" + (f" ({', '.join(self.fields)})" if self.fields else "")


def _keys_count(n: int) -> str:
    return f"{n} key" + ("" if n == 1 else "s")


def diff_tenants(old: list[TenantPlan], new: list[TenantPlan]) -> list[TenantChange]:
    """What changes from `old` to `new`, by tenant and field; keys only as counts."""
    before = {t.name: runtime_view(t) for t in old}
    after = {t.name: runtime_view(t) for t in new}
    changes = []
    for name in sorted(before.keys() | after.keys()):
        if name not in before:
            changes.append(TenantChange(name, "added", (_keys_count(len(after[name]["api_key_sha256"])),)))
        elif name not in after:
            changes.append(TenantChange(name, "removed"))
        else:
            a, b = before[name], after[name]
            fields = []
            added = len(set(b["api_key_sha256"]) - set(a["api_key_sha256"]))
            removed = len(set(a["api_key_sha256"]) - set(b["api_key_sha256"]))
            if added or removed:
                fields.append(f"keys (+{added} -{removed})")
            fields += [f for f in CONFIG_FIELDS if f != "name" and a[f] != b[f]]
            if fields:
                changes.append(TenantChange(name, "changed", tuple(fields)))
    return changes


def summary(tenant: TenantPlan) -> dict:
    """A tenant as `paliserve tenants list` shows it: the number of keys, never a digest."""
    view = runtime_view(tenant)
    view["keys"] = len(view.pop("api_key_sha256"))
    view["limits"] = {k: v for k, v in view["limits"].items() if v is not None}
    return view


# ---- the files: the layout the manifests mount ------------------------------------------------


def key_file_text(tenant: TenantPlan) -> str:
    """A tenant's entry of the Secret: one SHA-256 digest a line."""
    return "".join(f"{h}\n" for h in tenant.api_key_sha256)


def config_text(tenants: Iterable[TenantPlan]) -> str:
    """The ConfigMap's `tenants.yaml`: everything about the tenants but their keys."""
    entries = [{k: v for k, v in runtime_view(t).items() if k in CONFIG_FIELDS} for t in tenants]
    return yaml.safe_dump({"tenants": entries}, sort_keys=False)


def render_files(tenants: list[TenantPlan]) -> dict[str, str]:
    """Relative path under the root -> text, for every file of the layout."""
    files = {f"{KEYS_DIR}/{t.name}": key_file_text(t) for t in tenants if t.api_key_sha256}
    files[f"{CONFIG_DIR}/{CONFIG_FILE}"] = config_text(tenants)
    return files


def _read(path: Path) -> str:
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise TenantSetInvalid([f"{path.name}: larger than {MAX_FILE_BYTES} bytes"])
    return data.decode()


def _key_files(keys_dir: Path) -> list[Path]:
    """The tenant files of the keys directory (kubelet's `..data` and timestamped dirs skipped)."""
    if not keys_dir.is_dir():
        return []
    names = sorted(n for n in os.listdir(keys_dir) if not n.startswith("."))
    if len(names) > MAX_KEY_FILES:
        raise TenantSetInvalid([f"{KEYS_DIR}: more than {MAX_KEY_FILES} files"])
    return [keys_dir / n for n in names if (keys_dir / n).is_file()]


def read_tenant_dir(root: Path) -> list[TenantPlan] | None:
    """The tenant set the directory holds, None when it has no `tenants.yaml`. Raises
    TenantSetInvalid naming each problem (field paths and tenant names, never values of keys)."""
    config = Path(root) / CONFIG_DIR / CONFIG_FILE
    if not config.is_file():
        return None
    text = _read(config)
    keys = {path.name: _read(path) for path in _key_files(Path(root) / KEYS_DIR)}
    return parse_tenants(text, keys)


def parse_tenants(config: str, keys: dict[str, str]) -> list[TenantPlan]:
    """The tenant set of a `tenants.yaml` text and the key files' texts (tenant -> digests, one a
    line): what a replica reads, and what `k8s/validate.py` checks the rendered ConfigMap and
    Secret with. Raises TenantSetInvalid."""
    try:
        data = yaml.load(config, Loader=SafeLoader)
    except yaml.YAMLError as exc:
        raise TenantSetInvalid([f"{CONFIG_FILE}: not valid YAML ({type(exc).__name__})"]) from None
    entries = (data or {}).get("tenants") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise TenantSetInvalid([f"{CONFIG_FILE}: expected a mapping with a `tenants` list"])
    digests = {name: [line.strip() for line in text.splitlines() if line.strip()] for name, text in keys.items()}
    tenants, problems = [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(f"{CONFIG_FILE}: tenants[{i}] is not a mapping")
            continue
        extra = sorted(set(entry) - set(CONFIG_FIELDS))
        if extra:
            where = "keys belong in the tenant-keys Secret" if "api_key_sha256" in extra else f"known: {', '.join(CONFIG_FIELDS)}"
            problems.append(f"{CONFIG_FILE}: tenants[{i}]: unknown field(s) {', '.join(extra)} ({where})")
            continue
        try:
            tenants.append(TenantPlan.model_validate({**entry, "api_key_sha256": digests.get(entry.get("name"), [])}))
        except ValidationError as exc:
            problems += [f"{CONFIG_FILE}: tenants[{i}].{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    problems += validate_tenants(tenants)
    if problems:
        raise TenantSetInvalid(problems)
    return tenants


def write_tenant_dir(root: Path, tenants: list[TenantPlan]) -> None:
    """Write the set in the manifests' layout, switched atomically the way kubelet does: the
    files go into a new hidden directory, then one rename swaps the `..data` link to it (the
    key and config directories are links through `..data`), then the old directory goes."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    new = Path(tempfile.mkdtemp(prefix="..", dir=root))
    for relative, text in render_files(tenants).items():
        path = new / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (new / KEYS_DIR).mkdir(exist_ok=True)
    link = root / DATA_LINK
    previous = os.readlink(link) if link.is_symlink() else None
    staging = root / f"{DATA_LINK}_tmp"
    staging.unlink(missing_ok=True)
    os.symlink(new.name, staging)
    os.replace(staging, link)
    for sub in (KEYS_DIR, CONFIG_DIR):
        if not (root / sub).is_symlink():
            os.symlink(f"{DATA_LINK}/{sub}", root / sub)
    if previous and previous != new.name:
        shutil.rmtree(root / previous, ignore_errors=True)


# ---- the set in the cluster's GCS: nodes on other machines ------------------------------------


def tenants_kv_env() -> dict[str, str]:
    """What a joined node gives its replicas so that they follow the published set."""
    return {TENANTS_KV_ENV: "1"}


def publish_tenants(kv, tenants: list[TenantPlan]) -> str:
    """Publish the set (serve/cluster_kv.py): the files first, then the version the replicas
    poll, so a replica that sees the new version reads the new files. Returns the version."""
    version = tenant_set_version(tenants)
    kv.put(KV_SET_KEY, json.dumps({"version": version, "files": render_files(tenants)}).encode())
    kv.put(KV_VERSION_KEY, version.encode())
    return version


def published_tenants(raw: bytes) -> tuple[str, list[TenantPlan]]:
    """(version, tenants) of a published value; raises TenantSetInvalid as `parse_tenants`."""
    try:
        data = json.loads(raw)
        version, files = str(data["version"]), dict(data["files"])
    except (ValueError, KeyError, TypeError) as exc:
        raise TenantSetInvalid([f"the published tenant set is malformed ({type(exc).__name__})"]) from None
    keys = {rel.split("/", 1)[1]: text for rel, text in files.items() if rel.startswith(f"{KEYS_DIR}/")}
    return version, parse_tenants(files.get(f"{CONFIG_DIR}/{CONFIG_FILE}", ""), keys)


class KvWatcher:
    """Polls the set published in the cluster's GCS, as DirectoryWatcher polls a directory:
    `changed()` reads the version key only (False while the GCS does not answer: the replica keeps
    its set, and says so once); `read()` reads the set."""

    source = "cluster's GCS"

    def __init__(self, kv=None):
        self._kv = kv  # serve.cluster_kv.ClusterKV; default: this replica's own connection to the GCS
        self._seen: str | None = None
        self._failing = False

    @property
    def kv(self):
        if self._kv is None:
            from serve.cluster_kv import ClusterKV

            self._kv = ClusterKV.here()
        return self._kv

    def changed(self) -> bool:
        try:
            version = self.kv.get(KV_VERSION_KEY)
        except Exception as exc:
            if not self._failing:
                logger.warning("cannot read the tenant set's version from the cluster's GCS (%s); still serving "
                               "the set held", type(exc).__name__)  # fmt: skip
            self._failing = True
            return False
        self._failing = False
        return version is not None and version.decode() != self._seen

    def read(self) -> list[TenantPlan] | None:
        """The published set (None: none published); a set that fails validation is not read
        again until another is published, one the GCS did not return is (OSError)."""
        try:
            raw = self.kv.get(KV_SET_KEY)
        except Exception as exc:
            raise OSError(f"the cluster's GCS did not return the tenant set ({type(exc).__name__})") from None
        if raw is None:
            return None
        try:
            version, tenants = published_tenants(raw)
        except TenantSetInvalid:
            self._seen = _published_version(raw)
            raise
        self._seen = version
        return tenants

    def report(self, name: str, status: dict) -> None:
        self.kv.put(KV_SERVED_PREFIX + name.encode(), json.dumps(status).encode())


def _published_version(raw: bytes) -> str | None:
    try:
        return str(json.loads(raw)["version"])
    except (ValueError, KeyError, TypeError):
        return None


def read_published_statuses(kv) -> dict[str, dict]:
    """Replica id -> its last report, of the replicas that report to the GCS (dead ones included)."""
    statuses = {}
    for key in kv.keys(KV_SERVED_PREFIX):
        raw = kv.get(key)
        try:
            status = json.loads(raw) if raw else None
        except ValueError:
            continue
        if isinstance(status, dict) and "replica" in status:
            statuses[status["replica"]] = status
    return statuses


def prune_published_statuses(kv, live: set[str]) -> int:
    """Delete the reports of replicas that are gone (stopped, replaced, their node lost), which
    nothing else removes from the GCS; the number deleted."""
    gone = 0
    for key in kv.keys(KV_SERVED_PREFIX):
        raw = kv.get(key)
        try:
            replica = json.loads(raw).get("replica") if raw else None
        except (ValueError, AttributeError):
            replica = None
        if replica not in live:
            kv.delete(key)
            gone += 1
    return gone


class DirectoryWatcher:
    """Polls a tenants directory: `changed()` is True when any resolved file changed since the
    last `read()` (a stat of each; nothing is read while nothing changes)."""

    source = "files"

    def __init__(self, root: Path):
        self.root = Path(root)
        self._seen: tuple | None = None

    def signature(self) -> tuple:
        """What changes when the set may have: kubelet's (and `write_tenant_dir`'s) `..data`
        link target, one readlink per volume; per-file stats only for a plain directory."""
        top = self.root / DATA_LINK
        if top.is_symlink():
            return (("", os.readlink(top)),)
        entries = []
        for sub in (KEYS_DIR, CONFIG_DIR):
            volume = self.root / sub
            if (volume / DATA_LINK).is_symlink():
                entries.append((sub, os.readlink(volume / DATA_LINK)))
                continue
            for path in [volume / CONFIG_FILE] if sub == CONFIG_DIR else _key_files(volume):
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                entries.append((sub, path.name, st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(entries)

    def changed(self) -> bool:
        return self.signature() != self._seen

    def read(self) -> list[TenantPlan] | None:
        """The directory's set (None: no config file); the signature is taken first, so a change
        made while reading is seen at the next poll."""
        self._seen = self.signature()
        return read_tenant_dir(self.root)


# ---- in the replica ---------------------------------------------------------------------------


def catalog_of(tenancy) -> ServedCatalog:
    adapters = {name: a.tenant for by_name in tenancy.catalog.adapters.values() for name, a in by_name.items()}
    return ServedCatalog(tuple(tenancy.catalog.models), adapters, getattr(tenancy, "quotas", None) is not None)


def _replica_identity() -> tuple[str, str]:
    try:
        from ray import serve

        context = serve.get_replica_context()
        return context.replica_id.to_full_id_str(), context.deployment
    except Exception:  # outside a replica (unit tests)
        return f"pid-{os.getpid()}", ""


class TenantFeed:
    """Keeps a replica's `Tenancy` on the current tenant set: the plan's (Serve's `user_config`,
    through `configure`) unless the tenants directory (or, without one, the set published in the
    cluster's GCS) has one, and that set as it changes."""

    def __init__(self, tenancy, root: str | None = None, status_dir: str | None = None,
                 interval_s: float = POLL_INTERVAL_S, kv=None):
        self.tenancy = tenancy
        root = root if root is not None else os.environ.get(TENANTS_DIR_ENV)
        status_dir = status_dir if status_dir is not None else os.environ.get(STATUS_DIR_ENV)
        self.watcher = DirectoryWatcher(Path(root)) if root else None
        if self.watcher is None and (kv is not None or os.environ.get(TENANTS_KV_ENV)):
            self.watcher = KvWatcher(kv)
        self.status_dir = Path(status_dir) if status_dir else None
        self.interval_s = interval_s
        self.planned: list[TenantPlan] = []
        self.version: str | None = None
        self.source: str | None = None
        self.tenants: list[TenantPlan] = []
        self.refused: list[str] = []
        self._task: asyncio.Task | None = None
        self._from_files = False

    async def configure(self, user_config: dict | None) -> None:
        """Serve's `reconfigure`: at start and whenever the deployment's `user_config` changes.
        Reads the directory before it returns, so a replica never serves a stale set."""
        self.planned = [TenantPlan.model_validate(t) for t in (user_config or {}).get("tenants", [])]
        if not self._from_files:
            self.apply(self.planned, "plan")
        if self.watcher is not None:
            tenants = await asyncio.to_thread(self.look)
            if tenants is not None:
                self.apply(tenants, self.watcher.source)
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._watch())
        self.write_status()

    def look(self) -> list[TenantPlan] | None:
        """One look at the directory (file I/O only: runs on a worker thread): its set when a
        file changed since the last look and the set is readable, else None."""
        if self.watcher is None or not self.watcher.changed():
            return None
        try:
            tenants = self.watcher.read()
        except (TenantSetInvalid, OSError, UnicodeDecodeError) as exc:
            problems = exc.problems if isinstance(exc, TenantSetInvalid) else [f"unreadable: {type(exc).__name__}"]
            self._refuse(problems)
            return None
        if tenants is not None:  # no config file (yet, or any more): keep what is served
            self._from_files = True
        return tenants

    def poll(self) -> bool:
        """Look and apply (tests, and anything without an event loop); True when a new set was applied."""
        tenants = self.look()
        return tenants is not None and self.apply(tenants, self.watcher.source)

    def apply(self, tenants: list[TenantPlan], source: str) -> bool:
        version = tenant_set_version(tenants)
        if version == self.version:
            self.source = source
            return False
        problems = validate_tenants(tenants, catalog_of(self.tenancy), self.tenants if self.version else None)
        if problems and self.version is not None:
            self._refuse(problems)
            return False
        if problems:  # the first set: the plan's, validated by the planner; serve it and say so
            logger.error("the tenant set from the %s has problems: %s", source, "; ".join(problems))
        self.tenancy.update_tenants(tenants)
        changes = diff_tenants(self.tenants, tenants) if self.version else []
        self.tenants, self.version, self.source, self.refused = tenants, version, source, []
        if changes:
            logger.info("serving tenant set %s from the %s: %s", version, source, "; ".join(c.describe() for c in changes))
        return True

    def _refuse(self, problems: list[str]) -> None:
        if problems != self.refused:
            logger.error("tenant set refused, still serving %s: %s", self.version, "; ".join(problems))
        self.refused = problems
        self.write_status()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                tenants = await asyncio.to_thread(self.look)
                if tenants is not None and self.apply(tenants, self.watcher.source):  # applied on the event loop
                    await asyncio.to_thread(self.write_status)
            except Exception:  # the watch must outlive any one bad look
                logger.exception("watching the tenants directory failed")

    def status(self) -> dict:
        replica, deployment = _replica_identity()
        return {
            "replica": replica,
            "deployment": deployment,
            "pid": os.getpid(),
            "version": self.version,
            "source": self.source,
            "applied_at": time.time(),
            "refused": self.refused,
            "catalog": catalog_of(self.tenancy).to_json(),
            "tenants": [summary(t) for t in self.tenants],
        }

    def write_status(self) -> None:
        reporter = self.watcher if isinstance(self.watcher, KvWatcher) else None
        if self.status_dir is None and reporter is None:
            return
        status = self.status()
        name = re.sub(r"[^A-Za-z0-9._-]", "_", status["replica"]) + ".json"
        if reporter is not None:  # no status directory is shared with the head: report to the GCS
            try:
                reporter.report(name, status)
            except Exception as exc:
                logger.warning("could not report the tenant status to the cluster's GCS: %s", type(exc).__name__)
        if self.status_dir is None:
            return
        try:
            self.status_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.status_dir / f".{name}.tmp"
            tmp.write_text(json.dumps(status))
            os.replace(tmp, self.status_dir / name)
        except OSError as exc:
            logger.warning("could not write the tenant status: %s", type(exc).__name__)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
