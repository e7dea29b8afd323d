"""The Prometheus query table and the query_range response parser."""

import pytest

from loadtests.prometheus import QUERIES, mean_replicas, parse_matrix

RESPONSE = {
    "status": "success",
    "data": {
        "resultType": "matrix",
        "result": [
            {"metric": {"deployment": "tiny-paligemma"}, "values": [[100, "1"], [102, "2"], [104, "3"]]},
            {"metric": {"deployment": "other"}, "values": [[100, "1"]]},
        ],
    },
}


def test_queries_cover_replicas_kv_usage_and_queue():
    text = " ".join(QUERIES.values())
    for metric in ("ray_serve_deployment_replica_healthy", "ray_vllm_kv_cache_usage_perc",
                   "ray_vllm_num_requests_waiting", "ray_vllm_num_requests_running"):  # fmt: skip
        assert metric in text


def test_matrix_parses_into_series_and_mean_replicas():
    series = parse_matrix(RESPONSE)
    assert series[0].labels == {"deployment": "tiny-paligemma"}
    assert series[0].points == [(100.0, 1.0), (102.0, 2.0), (104.0, 3.0)]
    assert mean_replicas({"replicas": series}) == {"tiny-paligemma": 2.0, "other": 1.0}


def test_errors_are_reported():
    with pytest.raises(ValueError, match="bad_data"):
        parse_matrix({"status": "error", "error": "bad_data: parse error"})
    with pytest.raises(ValueError, match="matrix"):
        parse_matrix({"status": "success", "data": {"resultType": "vector", "result": []}})
