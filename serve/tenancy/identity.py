"""API keys to tenants. Keys are kept only as SHA-256 hex digests; a presented key is hashed and
compared with every stored digest in constant time (`hmac.compare_digest`, no early exit).

A plan without tenants serves without authentication: local development on loopback only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable

from paliserve.spec import SHA256_HEX, TenantPlan
from serve.errors import Unauthorized

BEARER = "bearer "


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_key(authorization: str | None) -> str | None:
    if not authorization or not authorization[: len(BEARER)].lower() == BEARER:
        return None
    return authorization[len(BEARER) :].strip() or None


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class TenantDirectory:
    """Maps `Authorization: Bearer <key>` to the tenant that owns the key."""

    def __init__(self, tenants: Iterable[TenantPlan]):
        self.tenants = {t.name: t for t in tenants}
        for tenant in self.tenants.values():
            for i, digest in enumerate(tenant.api_key_sha256):
                if not re.match(SHA256_HEX, digest):  # a plain key would never match, and must not be served
                    raise ValueError(f"tenant {tenant.name}: api_key_sha256[{i}] is not 64 lowercase hex digits")
        self._digests = [(digest, t) for t in self.tenants.values() for digest in t.api_key_sha256]

    @property
    def open(self) -> bool:
        """No tenants: nobody is authenticated (and only loopback clients are served)."""
        return not self.tenants

    def authenticate(self, authorization: str | None, client_host: str | None = None) -> TenantPlan | None:
        """The caller's tenant; None in open mode. Raises Unauthorized (401)."""
        if self.open:
            if not is_loopback(client_host):
                raise Unauthorized("This server has no tenants configured and serves loopback clients only.")
            return None
        key = bearer_key(authorization)
        if key is None:
            raise Unauthorized("Missing API key: send `Authorization: Bearer <key>`.")
        presented = key_digest(key)
        found = None
        for digest, tenant in self._digests:  # every digest is compared: timing does not reveal which matched
            if hmac.compare_digest(presented, digest):
                found = tenant
        if found is None:
            raise Unauthorized("Incorrect API key provided.", code="invalid_api_key")
        return found
