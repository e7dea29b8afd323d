import json

import typer
import yaml
from typer.testing import CliRunner

from autoscale.cli import EXIT_INFEASIBLE, EXIT_INVALID, register
from paliserve.spec import Plan
from planspecs import EXAMPLE

app = typer.Typer()
register(app)
runner = CliRunner()

ONE_TENANT = ["plan", "--model", "paligemma-3b-mix-448", "--gpu", "L4", "--concurrency", "64",
              "--prompt-tokens", "20", "--output-tokens", "64", "--ttft-ms", "1000", "--tpot-ms", "100"]


def test_table_and_plan_file(tmp_path):
    out = tmp_path / "plan.yaml"
    serve = tmp_path / "serve.yaml"
    result = runner.invoke(app, ["plan", str(EXAMPLE), "-o", str(out), "--serve-config", str(serve)],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "max_num_seqs" in result.output and "why" in result.output and "tenants" in result.output
    assert Plan.model_validate(yaml.safe_load(out.read_text())).deployments
    assert yaml.safe_load(serve.read_text())["applications"][0]["name"] == "paliserve"


def test_one_tenant_json_has_the_contract_keys():
    result = runner.invoke(app, ONE_TENANT + ["--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    d = data["deployments"][0]
    for key in ("name", "model", "engine_args", "replicas", "gpus_per_replica", "kv_cache", "image_tokens",
                "weights_bytes", "predicted"):
        assert key in d
    for key in ("gpu_memory_utilization", "max_num_seqs", "max_model_len", "tensor_parallel_size"):
        assert key in d["engine_args"]
    assert set(d["replicas"]) == {"min", "initial", "max"}
    assert {"bytes_per_token", "tokens_per_replica"} <= set(d["kv_cache"])
    assert {"ttft_p95_ms", "tpot_ms", "tokens_per_s", "max_concurrency"} <= set(d["predicted"])
    assert data["gpus"] >= 1 and data["tenants"][0]["headroom"]
    assert d["image_tokens"] == 1024 and d["kv_cache"]["bytes_per_token"] == 18432


def test_infeasible_exits_non_zero_naming_the_limit():
    args = ONE_TENANT.copy()
    args[args.index("--ttft-ms") + 1] = "5"
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_INFEASIBLE
    assert "ttft_slo" in result.output and "nearest feasible change" in result.output


def test_missing_flags_and_bad_files_are_usage_errors(tmp_path):
    assert runner.invoke(app, ["plan", "--model", "paligemma-3b-mix-448"]).exit_code == EXIT_INVALID
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: []\ngpus: []\ntenants: []\n")
    result = runner.invoke(app, ["plan", str(bad)])
    assert result.exit_code == EXIT_INVALID and "models" in result.output
