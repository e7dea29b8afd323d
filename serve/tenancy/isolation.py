"""Cross-tenant isolation of cached computation: the salt that keys a tenant's prefix (KV) cache
and multimodal cache entries apart from every other tenant's.

vLLM hashes a request's `cache_salt` into the hash of its first KV block, and every later block's
hash chains from it, so requests with different salts never share a prefix-cache block. The
multimodal caches (the processor cache in the engine's front end, the encoder cache in the engine
core) are keyed by the image's hash alone, which no salt enters: the engine therefore also passes
`multi_modal_uuids` made of the salt and the image's own content hash (`image_uuid`).

The salt is derived here, on the server, from the authenticated tenant and the model or adapter
it asked for; a client can never choose it (a `cache_salt` field in a chat request is refused
with 400, as every field the server does not honour is). It need not be secret, since no client
can present one, but `PALISERVE_CACHE_SALT_SECRET` in the replicas' environment keys it with a
per-cluster secret anyway (an HMAC), so that salts seen in logs or KV-cache events of one
cluster say nothing about another's. Open mode (a plan without tenants) uses no salt: there is
one caller.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from functools import lru_cache

from PIL import Image

SECRET_ENV = "PALISERVE_CACHE_SALT_SECRET"
DEFAULT_KEY = b"paliserve-cache-salt-v1"


@lru_cache(maxsize=4096)
def _salt(secret: str, tenant: str, target: str) -> str:
    key = secret.encode() if secret else DEFAULT_KEY
    return hmac.new(key, f"{tenant}\0{target}".encode(), hashlib.sha256).hexdigest()


def cache_salt(tenant: str | None, target: str) -> str | None:
    """The salt of `tenant`'s requests to `target` (a model or `model:adapter`); None without tenants."""
    if tenant is None:
        return None
    return _salt(os.environ.get(SECRET_ENV, ""), tenant, target)


def image_uuid(salt: str, image: Image.Image) -> str:
    """The multimodal cache id of `image` for requests salted `salt`: the salt and the image's
    pixels (mode, size, raw bytes), so two tenants sending the same image get different entries
    and one tenant's repeats of it the same one. vLLM would hash the pixels itself otherwise."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{image.mode}\0{image.width}x{image.height}\0".encode())
    digest.update(image.tobytes())
    return f"{salt}-{digest.hexdigest()}"
