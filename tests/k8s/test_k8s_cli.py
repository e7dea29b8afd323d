"""`paliserve k8s`: spec or plan in, kustomize tree out; refused plans write nothing."""

from __future__ import annotations

import typer
import yaml
from k8s_plans import EXAMPLE, LOCAL_CPU, TINY_MODEL, example_plan
from typer.testing import CliRunner

from k8s.cli import EXIT_INVALID, register

app = typer.Typer()
register(app)


@app.callback()
def _group() -> None:
    """A stand-in for the `paliserve` app."""


def run(*args: str):
    return CliRunner().invoke(app, ["k8s", *map(str, args)])


def test_spec_renders_and_validates(tmp_path):
    result = run(EXAMPLE, "-o", tmp_path, "--validate", "--image", "registry.example.com/paliserve:1.0",
                 "--gpu-product", "L4=NVIDIA-L4-custom")
    assert result.exit_code == 0, result.output
    assert "valid: 12 documents in base, overlays/prod (Kubernetes 1.32)" in result.output  # 3: the quota store
    kustomization = yaml.safe_load((tmp_path / "overlays/prod/kustomization.yaml").read_text())
    assert kustomization["images"] == [{"name": "paliserve", "newName": "registry.example.com/paliserve", "newTag": "1.0"}]
    assert "NVIDIA-L4-custom" in (tmp_path / "overlays/prod/rayservice.yaml").read_text()


def test_one_overlay_per_run_and_runs_into_one_directory_add_up(tmp_path):
    assert run(EXAMPLE, "-o", tmp_path).exit_code == 0
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["prod"]  # GPUs: prod
    base = {p: p.read_text() for p in (tmp_path / "base").iterdir()}
    result = run(LOCAL_CPU, "-o", tmp_path, "--tiny-model", TINY_MODEL, "--validate")  # no GPUs: dev
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["dev", "prod"]
    assert base == {p: p.read_text() for p in (tmp_path / "base").iterdir()}
    assert "valid: 22 documents in base, overlays/dev, overlays/prod" in result.output  # 6: the quota stores


def test_plan_file_is_used_as_it_is(tmp_path):
    plan = example_plan()
    plan.deployments[0].replicas.max = 5
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(plan.model_dump(mode="json")))
    result = run(plan_file, "-o", tmp_path / "out", "--overlay", "staging")
    assert result.exit_code == 0, result.output
    rayservice = yaml.safe_load((tmp_path / "out/overlays/staging/rayservice.yaml").read_text())
    assert rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] == 4  # ceil((5 x 1 + 1 x 2) GPUs / 2 per pod)


def test_refused_plan_writes_nothing(tmp_path):
    data = example_plan().model_dump(mode="json")
    data["deployments"][0]["accelerator"] = "X100"
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(data))
    result = run(plan_file, "-o", tmp_path / "out")
    assert result.exit_code == EXIT_INVALID
    assert "plan refused, nothing rendered" in result.output and "unknown GPU type 'X100'" in result.output
    assert not (tmp_path / "out").exists()
