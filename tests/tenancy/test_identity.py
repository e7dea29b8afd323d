"""API keys: SHA-256 digests only, Bearer parsing, 401s, and the open (no tenants) rule."""

import pytest

from paliserve.spec import TenantPlan
from serve.errors import Unauthorized
from serve.tenancy.identity import TenantDirectory, bearer_key, key_digest


def tenant(name, *keys):
    return TenantPlan(name=name, api_key_sha256=[key_digest(k) for k in keys], models=["m"])


def test_keys_map_to_their_tenant():
    directory = TenantDirectory([tenant("a", "sk-a1", "sk-a2"), tenant("b", "sk-b")])
    assert directory.authenticate("Bearer sk-a1", "10.0.0.1").name == "a"
    assert directory.authenticate("bearer sk-a2", None).name == "a"
    assert directory.authenticate("Bearer  sk-b ", None).name == "b"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic sk-a1", "sk-a1", "Bearer sk-a", "Bearer SK-A1"])
def test_missing_or_unknown_keys_are_401(header):
    with pytest.raises(Unauthorized) as err:
        TenantDirectory([tenant("a", "sk-a1")]).authenticate(header, "127.0.0.1")
    assert err.value.status_code == 401 and err.value.error_type == "authentication_error"
    assert "sk-a1" not in err.value.message


def test_a_tenant_without_keys_cannot_be_reached():
    with pytest.raises(Unauthorized):
        TenantDirectory([tenant("nokeys")]).authenticate("Bearer anything", None)


def test_no_tenants_serves_loopback_without_keys_and_refuses_others():
    directory = TenantDirectory([])
    assert directory.open
    assert directory.authenticate(None, "127.0.0.1") is None
    assert directory.authenticate("Bearer whatever", "::1") is None
    for host in ("10.1.2.3", "192.168.0.2", None, "not-an-ip"):
        with pytest.raises(Unauthorized):
            directory.authenticate(None, host)


def test_bearer_parsing():
    assert bearer_key("Bearer abc") == "abc"
    assert bearer_key("BEARER abc") == "abc"
    assert bearer_key("Token abc") is None


def test_a_directory_refuses_digests_that_are_not_sha256_hex():
    for bad in ["sk-plaintext-key", key_digest("k").upper()]:
        with pytest.raises(ValueError, match="64 lowercase hex") as err:
            TenantDirectory([TenantPlan(name="a", api_key_sha256=[bad])])
        assert bad not in str(err.value)
