"""Fair share across ingress replicas: each replica's VTC gate (fairness.py) sees what the others
served, through counters shared in the quota store's Redis.

Every `INTERVAL_S`, off the request path, a replica adds the tokens it served per tenant since the
last round to one hash per model (`HINCRBYFLOAT`, one pipeline for all models) and reads the
totals back; each gate's `elsewhere` becomes the totals less its own share. The gate's choice
then ranks a tenant by what the whole cluster served it, so a tenant whose traffic lands mostly
on one replica does not get a full share on each. The hot path never waits on Redis: a round that
fails keeps its tokens for the next one and the gates keep the last totals they had.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from serve.tenancy.fairness import FairGate

logger = logging.getLogger("paliserve.tenancy")
INTERVAL_S = 0.15
KEY_PREFIX = "paliserve:vtc:"
TTL_S = 3600  # a cluster idle this long starts its shares afresh


def key(model: str) -> str:
    return f"{KEY_PREFIX}{{{model}}}"


class SharedCounters:
    def __init__(self, redis, gates: dict[str, FairGate]):
        self.redis = redis
        self.gates = gates

    async def sync_once(self) -> None:
        deltas = {model: gate.vtc.take_unsynced() for model, gate in self.gates.items()}
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for model, added in deltas.items():
                    for tenant, tokens in added.items():
                        if tokens:
                            pipe.hincrbyfloat(key(model), tenant, tokens)
                    pipe.expire(key(model), TTL_S)
                    pipe.hgetall(key(model))
                replies = await pipe.execute()
        except BaseException:  # not added (or not known to be): kept for the next round
            for model, added in deltas.items():
                self.gates[model].vtc.unshared(added)
            raise
        totals = [reply for reply in replies if isinstance(reply, dict)]
        for (model, added), shared in zip(deltas.items(), totals):
            self.gates[model].vtc.merge({t.decode(): float(v) for t, v in shared.items()}, added)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL_S)
            try:
                await asyncio.wait_for(self.sync_once(), 2.0)
            except (TimeoutError, OSError, RedisError) as exc:
                logger.debug("sharing fair-share counters failed: %s", exc)
