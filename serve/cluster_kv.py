"""What a local cluster's head publishes for its other nodes, in Ray's internal KV (the GCS).

A replica that Ray places on a machine that ran `paliserve join` inherits that node's `ray start`
environment, not the head's: the quota store's address and password and the live tenant set
reach it through the cluster's GCS instead, which every node already talks to and which answers
only callers holding the cluster's Ray token (token authentication, serve/cluster.py). Whoever
holds that token can already run any code on every node, the quota store's password included,
so keeping the password there grants nobody anything new; it is never printed, and is not
passed through Serve's runtime_env (Ray shows that in its dashboard and its state API) nor
through a command line.

Keys, in the `paliserve` namespace:
- `quota-store`: `{"url", "password"}`, written by `paliserve up` before it says how to join;
  `paliserve join` reads it before `ray start` (serve/nodes.py).
- `tenants/version` and `tenants/set`: the live tenant set (serve/tenancy/registry.py), written
  by `paliserve up` and `paliserve tenants apply`; replicas on joined nodes poll the version.
- `tenants-served/<replica>`: what each such replica serves, which `tenants apply` waits on.
"""

from __future__ import annotations

import os

NAMESPACE = b"paliserve"
QUOTA_STORE_KEY = b"quota-store"
TIMEOUT_S = 5.0


class ClusterKV:
    """Get, put, list and delete keys of the `paliserve` namespace, each call bounded in time."""

    def __init__(self, client, timeout_s: float = TIMEOUT_S):
        self.client = client
        self.timeout_s = timeout_s

    @classmethod
    def at(cls, address: str, token_path: str, timeout_s: float = TIMEOUT_S) -> ClusterKV:
        """The GCS at `address` (HOST:PORT), from a process not connected to the cluster, with the
        cluster's token file (this process then uses token authentication, as `ray.init` would)."""
        from ray._private.authentication.authentication_token_setup import _enable_token_auth
        from ray._raylet import AuthenticationTokenLoader, GcsClient

        from serve.cluster import auth_env

        os.environ.update(auth_env(token_path))
        _enable_token_auth()
        AuthenticationTokenLoader.instance().reset_cache()
        return cls(GcsClient(address=address), timeout_s)

    @classmethod
    def here(cls, timeout_s: float = TIMEOUT_S) -> ClusterKV:
        """The cluster this process is part of: a Ray worker (a Serve replica) or a connected driver."""
        import ray._private.worker

        return cls(ray._private.worker.global_worker.gcs_client, timeout_s)

    def get(self, key: bytes) -> bytes | None:
        return self.client.internal_kv_get(key, namespace=NAMESPACE, timeout=self.timeout_s)

    def put(self, key: bytes, value: bytes) -> None:
        self.client.internal_kv_put(key, value, True, namespace=NAMESPACE, timeout=self.timeout_s)

    def keys(self, prefix: bytes) -> list[bytes]:
        return list(self.client.internal_kv_keys(prefix, namespace=NAMESPACE, timeout=self.timeout_s))

    def delete(self, key: bytes) -> None:
        self.client.internal_kv_del(key, False, namespace=NAMESPACE, timeout=self.timeout_s)


class MemoryKV(ClusterKV):
    """A dict with ClusterKV's methods (tests, and anything without a cluster)."""

    def __init__(self):
        super().__init__(None)
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.data[key] = value

    def keys(self, prefix: bytes) -> list[bytes]:
        return sorted(k for k in self.data if k.startswith(prefix))

    def delete(self, key: bytes) -> None:
        self.data.pop(key, None)
