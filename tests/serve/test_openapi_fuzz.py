"""schemathesis against the served OpenAPI document: no input ever gets a 5xx.

The schema is the gateway app's OpenAPI document, which `test_served_document_is_the_fuzzed_one`
checks is exactly what the live stack serves at `/openapi.json`; schemathesis generates requests for every
operation in it (its examples, coverage and fuzzing phases, valid and invalid inputs alike),
sends them with the local tenant's key, and checks each response: never a server error, and
every 4xx in the OpenAI error format `{"error": {"message", "type", "param", "code"}}`. The same
operations without a key must all get 401 (`/healthz`, `/health`, `/version` and `/openapi.json` need none).

Random strings practically never form a decodable image, so nearly every request is a cheap 4xx
that never reaches the engine. Deterministic: a fixed seed, derandomized generation, no example
database. (The document is built in-process because `schemathesis.pytest.from_fixture`, which
would load it from the stack's URL at run time, fails under pytest 9 in schemathesis 4.32:
`'Function' object has no attribute '_nodeid'`.) `pytest -s` prints how many requests each operation got and their status codes.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import httpx
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
import figures
from serve_helpers import AUTH

from serve.gateway import app

pytestmark = pytest.mark.engine

SEED = 8
REQUEST_TIMEOUT_S = 60
OPEN_ROUTES = {"/healthz", "/health", "/version", "/openapi.json"}  # served without a key


def _config(max_examples: int, coverage: bool, headers: dict[str, str]) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "headers": headers,
            "request-timeout": REQUEST_TIMEOUT_S,
            "generation": {
                "mode": "all",  # valid and invalid inputs
                "max-examples": max_examples,
                "deterministic": True,
                "database": "none",
            },
            "phases": {"coverage": {"enabled": coverage}, "stateful": {"enabled": False}},
        }
    )


# with the key: ~600 requests (the coverage phase's boundary and wrong-type cases, then fuzzing)
WITH_KEY = _config(max_examples=25, coverage=True, headers=AUTH)
# without it: every request must be refused before its body is looked at
WITHOUT_KEY = _config(max_examples=10, coverage=False, headers={})

SENT: dict[str, Counter] = defaultdict(Counter)  # "with key" / "without key" -> "METHOD /path status" -> n


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    for kind, counts in SENT.items():
        figures.record(f"openapi fuzz, {kind}", Counter(label.rsplit(" ", 1)[1] for label in counts.elements()))
        operations = {label.rsplit(" ", 1)[0] for label in counts}
        print(f"\n[openapi fuzz] {kind}: {sum(counts.values())} requests over {len(operations)} operations")
        for label, n in sorted(counts.items()):
            print(f"[openapi fuzz]   {label}: {n}")


DOCUMENT = app.openapi()


def test_served_document_is_the_fuzzed_one(url):
    served = httpx.get(f"{url}/openapi.json", timeout=30)
    assert served.status_code == 200, served.text
    def operations(document):
        return {(method, path, bool(op.get("requestBody"))) for path, ops in document["paths"].items() for method, op in ops.items()}

    assert operations(served.json()) == operations(DOCUMENT)
    assert set(served.json()["components"]["schemas"]) == set(DOCUMENT["components"]["schemas"])


def openai_error_body(ctx, response, case) -> None:
    """Every 4xx carries the OpenAI error object, naming a message."""
    if not 400 <= response.status_code < 500:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} body is not JSON: {response.content[:200]!r}") from None
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error
    return None


def _record(kind: str, case, status: int) -> None:
    SENT[kind][f"{case.operation.method.upper()} {case.operation.path} {status}"] += 1


schema = schemathesis.openapi.from_dict(DOCUMENT, config=WITH_KEY)
schema_without_key = schemathesis.openapi.from_dict(DOCUMENT, config=WITHOUT_KEY)


@schema.parametrize()
def test_no_input_gets_a_server_error(case, url):
    response = case.call(base_url=url, headers=AUTH, timeout=REQUEST_TIMEOUT_S)
    _record("with key", case, response.status_code)
    case.validate_response(response, checks=[not_a_server_error, openai_error_body])


@schema_without_key.parametrize()
def test_every_route_needs_a_key(case, url):
    response = case.call(base_url=url, timeout=REQUEST_TIMEOUT_S)
    _record("without key", case, response.status_code)
    case.validate_response(response, checks=[not_a_server_error, openai_error_body])
    if case.operation.path in OPEN_ROUTES:
        assert response.status_code in (200, 503), response.status_code
    else:
        assert response.status_code == 401, (response.status_code, response.content[:300])
        error = json.loads(response.content)["error"]
        assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key"), error


def test_every_operation_was_fuzzed():
    """Runs after the parametrized tests (file order): each operation got requests both ways."""
    operations = {f"{result.ok().method.upper()} {result.ok().path}" for result in schema.get_all_operations()}
    assert {"POST /v1/chat/completions", "POST /v1/vision/detect", "GET /v1/models"} <= operations
    for kind in ("with key", "without key"):
        if not SENT[kind]:
            pytest.skip("the fuzzing tests did not run in this session")
        fuzzed = {label.rsplit(" ", 1)[0] for label in SENT[kind]}
        assert operations <= fuzzed, (kind, operations - fuzzed)
