"""Whether Serve has a deployment with no replica up while one is coming: the state in which a
request would wait in Serve (its router, or the fallback proxy) for a replica that may take a
minute to start, where the client is better told to retry (serve/ingress.py, serve/gateway.py).

Read from `serve.status()` (the controller), only after a request has already waited, and at most
once per `CACHE_S` per deployment however many requests wait."""

from __future__ import annotations

import asyncio
import logging
import time

logger = logging.getLogger("paliserve.replica_states")
CACHE_S = 1.0


def _missing(deployment) -> bool:
    states = {str(getattr(s, "value", s)): n for s, n in deployment.replica_states.items() if n}
    return bool(states) and not states.get("RUNNING")


async def replicas_missing(app: str | None = None, deployment: str | None = None, unknown: bool = True) -> bool:
    """Whether a deployment (every one, or `app`'s `deployment`) has no RUNNING replica while one
    is starting or stopping (being replaced, or its application starting); `unknown` when Serve
    cannot be asked."""
    from ray import serve

    try:
        status = await asyncio.to_thread(serve.status)
    except Exception:
        logger.warning("Serve's status unavailable", exc_info=True)
        return unknown
    for name, application in status.applications.items():
        if app is not None and name != app:
            continue
        for dep_name, dep in application.deployments.items():
            if (deployment is None or dep_name == deployment) and _missing(dep):
                return True
    return False


class DeploymentWatch:
    """`replicas_missing`, with the answer of one `serve.status()` call shared by every caller
    for `CACHE_S` (a burst of waiting requests asks once): `missing(handle)` for the deployment
    behind a Serve handle (a gateway's engine), `any_missing()` for every deployment (the
    fallback proxy, which does not know the request's deployment)."""

    def __init__(self, ask=replicas_missing, cache_s: float = CACHE_S):
        self.ask = ask
        self.cache_s = cache_s
        self._answers: dict[tuple, tuple[float, asyncio.Future]] = {}

    async def missing(self, handle) -> bool:
        """No replica up behind `handle`; False when it cannot be told (a call waits on, as before)."""
        app, deployment = getattr(handle, "app_name", None), getattr(handle, "deployment_name", None)
        if deployment is None:  # not a Serve handle (an in-process engine): nothing to wait for
            return False
        return await self._cached(app=app, deployment=deployment, unknown=False)

    async def any_missing(self) -> bool:
        """A deployment with no replica up; True when Serve cannot be asked."""
        return await self._cached(app=None, deployment=None, unknown=True)

    async def _cached(self, **question) -> bool:
        key, now = tuple(question.values()), time.monotonic()
        asked = self._answers.get(key)
        if asked is None or now - asked[0] > self.cache_s:
            asked = (now, asyncio.ensure_future(self.ask(**question)))
            self._answers[key] = asked
        return await asyncio.shield(asked[1])
