"""Keys x models x adapters through the real stack: allowed, refused (401/403/404), what
`/v1/models` shows each tenant, adapters that change the output, and the per-replica LRU bound."""

import httpx
import pytest
from stack_helpers import MODEL, chat

from conftest import key_of

pytestmark = pytest.mark.engine

BASE, ALICE, BOB, CAROL = MODEL, f"{MODEL}:alice-style", f"{MODEL}:bob-style", f"{MODEL}:carol-style"
# tenant -> target -> expected status
MATRIX = {
    "alice": {BASE: 200, ALICE: 200, BOB: 403, CAROL: 403},
    "bob": {BASE: 403, ALICE: 403, BOB: 200, CAROL: 403},
    "carol": {BASE: 200, ALICE: 403, BOB: 403, CAROL: 200},
    "local": {BASE: 200, ALICE: 403, BOB: 403, CAROL: 403},
}


def test_isolation_matrix(url):
    seen = {}
    for tenant, row in MATRIX.items():
        for target, expected in row.items():
            reply = chat(url, tenant, target, max_tokens=4)
            seen[(tenant, target)] = reply.status_code
            if expected == 403:
                error = reply.json()["error"]
                assert error["type"] == "permission_error" and error["param"] == "model", error
                assert error["code"] == "model_not_allowed"
            elif reply.status_code == 200:
                assert reply.json()["model"] == target
    expected = {(t, m): s for t, row in MATRIX.items() for m, s in row.items()}
    assert seen == expected


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "sk-test-alice"},
                                     {"Authorization": "Basic c2stdGVzdC1hbGljZQ=="}])  # fmt: skip
def test_missing_or_unknown_keys_get_401_on_every_route(url, headers):
    routes = [("POST", "/v1/chat/completions", {"model": MODEL, "messages": []}),
              ("GET", "/v1/models", None), ("POST", "/v1/vision/caption", {"image": "AAAA"})]  # fmt: skip
    for method, path, body in routes:
        reply = httpx.request(method, f"{url}{path}", json=body, headers=headers, timeout=30)
        assert reply.status_code == 401, (path, reply.text)
        error = reply.json()["error"]
        assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
        assert "sk-" not in error["message"]


def test_models_list_only_what_each_tenant_may_use(url):
    def listed(tenant):
        reply = httpx.get(f"{url}/v1/models", headers=key_of(tenant), timeout=30)
        return [m["id"] for m in reply.json()["data"]]

    assert listed("alice") == [BASE, ALICE]
    assert listed("bob") == [BOB]
    assert listed("local") == [BASE]


def test_unknown_adapter_is_404_without_revealing_other_tenants(url):
    reply = chat(url, "alice", f"{MODEL}:nope")
    assert reply.status_code == 404
    assert "bob-style" not in reply.text and "carol-style" not in reply.text


def test_adapters_change_the_output_and_differ_from_each_other(url):
    def text(tenant, target):
        reply = chat(url, tenant, target, max_tokens=12)
        assert reply.status_code == 200, reply.text
        return reply.json()["choices"][0]["message"]["content"]

    base, alice, bob = text("alice", BASE), text("alice", ALICE), text("bob", BOB)
    assert alice != base and bob != base and alice != bob
    assert text("alice", ALICE) == alice  # greedy: the same adapter gives the same text again
    assert text("local", BASE) == base


def test_each_replica_keeps_a_bounded_lru_set_of_adapters(url, ray_client):
    from ray import serve

    handle = serve.get_deployment_handle(MODEL, app_name="paliserve")
    for tenant, target in [("alice", ALICE), ("bob", BOB), ("carol", CAROL)]:
        assert chat(url, tenant, target, max_tokens=2).status_code == 200
    loaded = handle.loaded_adapters.remote().result(timeout_s=30)
    assert loaded == ["bob-style", "carol-style"]  # two per replica; alice's, least recently used, left
    assert chat(url, "alice", ALICE, max_tokens=2).status_code == 200
    assert handle.loaded_adapters.remote().result(timeout_s=30) == ["alice-style", "carol-style"]
