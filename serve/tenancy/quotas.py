"""Per-tenant quotas over a sliding 60 s window, kept in Redis for every gateway replica at once:
requests per minute, tokens per minute (prompt + generated, settled after the response) and
concurrent requests.

Every call is one atomic Lua script (`ACQUIRE`): an admission, a finished request's settlement
(in the background), or both with credit (below). No gateway waits on another, and Redis runs
scripts one at a time, so the counts are exact across replicas. The tenant's limits travel as script arguments on
every call, so limits changed live take effect at the next admission; the store holds usage only.

Sliding logs, not token buckets: the limits are exact (the first 429 comes at the configured
number), which buckets with refill do not give. Per tenant (keys share the `{tenant}` hash tag,
so one Redis Cluster slot holds them):
- `req`: sorted set of admissions (member: request id, score: admission time in ms);
- `tok`, `toksum`: sorted set of settled requests (member `id:tokens`, score: settle time) and
  the running sum of its tokens, lowered as entries leave the window;
- `conc`: sorted set of leases on a concurrency slot (score: when the lease lapses). A request's
  lease is removed when it settles; one whose gateway died lapses after `lease_s`, so a crash
  cannot hold a slot for ever.
Time is Redis's own clock (`TIME`), so gateways with skewed clocks agree.

The one script also carries a gateway's bookkeeping for the tenant, applied before it checks:
settlements (lease removed, tokens logged), re-stamped and handed-back entries of local credit,
and it can reserve credit: entries counted in `req` and `conc` at once that the gateway then
hands to requests without asking (serve/tenancy/credit.py). Calls for one tenant travel in one
FIFO lane, so Redis applies them in the order the gateway sent them.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from paliserve.spec import TenantLimits

WINDOW_S = 60.0
CONCURRENCY_RETRY_S = 1.0
# Admission waits this long for the store, then answers 503: a store that is down must not
# hold every request for seconds.
STORE_TIMEOUT_S = 0.5
SETTLE_TIMEOUT_S = 5.0  # settling runs after the response: no client waits on it
# Calls are sent in pipelines (QuotaStore._submit) on this many lanes per gateway replica, a
# tenant's calls always on the same lane (in order), each round trip carrying up to MAX_BATCH.
PIPELINES = 4
MAX_BATCH = 256
URL_ENV = "PALISERVE_QUOTA_STORE_URL"
PASSWORD_ENV = "PALISERVE_QUOTA_STORE_PASSWORD"
PASSWORD_FILE_ENV = "PALISERVE_QUOTA_STORE_PASSWORD_FILE"
CA_FILE_ENV = "PALISERVE_QUOTA_STORE_CA_FILE"  # the store's certificate, for a rediss:// URL (serve/store_tls.py)


@dataclass(frozen=True)
class Rejection:
    limit: str  # requests_per_min | tokens_per_min | max_concurrency
    message: str
    retry_after_s: float


KEY_PREFIX = "paliserve:quota:"

# KEYS: req, tok, toksum, conc. ARGV: 1 request id ('': none), 2 requests_per_min,
# 3 tokens_per_min, 4 max_concurrency (-1: no limit), 5 lease ms, 6 window ms, 7 now ms ('': Redis's
# clock), 8 credit wanted, 9 gateway replicas, 10 credit id, 11-13 how many settlements, re-stamps
# and hand-backs follow, 14 credit the caller holds unused; then settlements (member, tokens),
# re-stamps (member, ms), hand-backs (member).
# Returns {limit ('': admitted or no request), usage, retry ms, credit granted, now ms, tokens left
# (-1: no tokens limit)}. Credit of n is reserved as members `<credit id>.1`..`.n`.
ACQUIRE = """
local now
if ARGV[7] ~= '' then now = tonumber(ARGV[7]) else
  local t = redis.call('TIME'); now = t[1] * 1000 + t[2] / 1000 end
local window, lease = tonumber(ARGV[6]), tonumber(ARGV[5])
local horizon = now - window
local i = 15
local settles, restamps, returns = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
for _ = 1, settles do
  local member, tokens = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  redis.call('ZREM', KEYS[4], member)
  -- idempotent: a settlement sent again (its first reply lost) counts its tokens once
  if tokens > 0 and redis.call('ZADD', KEYS[2], now, member .. ':' .. tokens) == 1 then
    redis.call('INCRBY', KEYS[3], tokens)
    redis.call('PEXPIRE', KEYS[2], math.ceil(window))
    redis.call('PEXPIRE', KEYS[3], math.ceil(window))
  end
end
for _ = 1, restamps do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[i + 1], ARGV[i])
  i = i + 2
end
while returns > 0 do
  local members = {}
  for j = 1, math.min(returns, 500) do members[j] = ARGV[i]; i = i + 1 end
  returns = returns - #members
  redis.call('ZREM', KEYS[1], unpack(members))
  redis.call('ZREM', KEYS[4], unpack(members))
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', horizon)
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', horizon)
if #old > 0 then
  local gone = 0
  for j = 1, #old do gone = gone + tonumber(string.match(old[j], ':(%d+)$')) end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', horizon)
  if redis.call('DECRBY', KEYS[3], gone) <= 0 then redis.call('DEL', KEYS[3]) end
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local rpm, tpm, conc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local added = false
if ARGV[1] ~= '' then
  if conc >= 0 then
    local n = redis.call('ZCARD', KEYS[4])
    if n >= conc then return {'max_concurrency', n, 1000, 0, now, -1} end
  end
  if rpm >= 0 then
    local n = redis.call('ZCARD', KEYS[1])
    if n >= rpm then
      local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
      local oldest = first[2] and tonumber(first[2]) or now
      return {'requests_per_min', n, math.ceil(oldest + window - now), 0, now, -1}
    end
  end
  if tpm >= 0 then
    local sum = tonumber(redis.call('GET', KEYS[3]) or '0')
    if sum >= tpm then
      -- when enough settled tokens leave the window for the sum to drop below the limit
      local remaining, at, start = sum, nil, 0
      while at == nil do
        local page = redis.call('ZRANGE', KEYS[2], start, start + 99, 'WITHSCORES')
        if #page == 0 then break end
        for j = 1, #page, 2 do
          remaining = remaining - tonumber(string.match(page[j], ':(%d+)$'))
          if remaining < tpm then at = tonumber(page[j + 1]); break end
        end
        start = start + 100
      end
      return {'tokens_per_min', sum, math.ceil((at or now) + window - now), 0, now, -1}
    end
  end
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('ZADD', KEYS[4], now + lease, ARGV[1])
  added = true
end
-- credit: a gateway holds at most 1 / (2 x gateways + 1) of what each limit has left (its own
-- unused credit counted as left), so that what all the gateways hold stays well under the
-- headroom; none once the tokens are spent
local granted, tokens_left, held = tonumber(ARGV[8]), -1, tonumber(ARGV[14])
if tpm >= 0 then
  tokens_left = tpm - tonumber(redis.call('GET', KEYS[3]) or '0')
  if tokens_left <= 0 then granted = 0 end
end
local share = 2 * tonumber(ARGV[9]) + 1
if granted > 0 and rpm >= 0 then
  granted = math.min(granted, math.floor((rpm - redis.call('ZCARD', KEYS[1]) + held) / share) - held) end
if granted > 0 and conc >= 0 then
  granted = math.min(granted, math.floor((conc - redis.call('ZCARD', KEYS[4]) + held) / share) - held) end
if granted > 0 then
  local entries, leases = {}, {}
  for j = 1, granted do
    local member = ARGV[10] .. '.' .. j
    entries[2 * j - 1], entries[2 * j] = now, member
    leases[2 * j - 1], leases[2 * j] = now + lease, member
  end
  redis.call('ZADD', KEYS[1], unpack(entries))
  redis.call('ZADD', KEYS[4], unpack(leases))
  added = true
else
  granted = 0
end
if added then
  redis.call('PEXPIRE', KEYS[1], math.ceil(window + lease))
  redis.call('PEXPIRE', KEYS[4], math.ceil(window + lease))
end
return {'', 0, 0, granted, now, tokens_left}
"""


class QuotaUnavailable(Exception):
    """The store did not answer in time (or at all): no limit can be checked."""


def _message(limit: str, tenant: str, limits: TenantLimits, usage: int) -> str:
    if limit == "max_concurrency":
        return f"Tenant '{tenant}' is at its limit of {limits.max_concurrency} concurrent requests (max_concurrency)."
    if limit == "requests_per_min":
        return f"Tenant '{tenant}' reached its limit of {limits.requests_per_min} requests per minute (requests_per_min)."
    return f"Tenant '{tenant}' used {usage} of its {limits.tokens_per_min} tokens per minute (tokens_per_min)."


@functools.lru_cache(maxsize=65536)
def keys(tenant: str) -> list[str]:
    """The script's KEYS for `tenant` (cached: built once per tenant)."""
    base = f"{KEY_PREFIX}{{{tenant}}}:"
    return [base + "req", base + "tok", base + "toksum", base + "conc"]


@dataclass(frozen=True)
class Reply:
    """What one call of the script answered."""

    rejection: Rejection | None  # the request was refused (None: admitted, or no request)
    granted: int  # credit reserved: members `<credit id>.1` .. `.granted`
    now_ms: float  # Redis's clock when the script ran
    tokens_left: int | None  # tokens_per_min less the settled sum (None: no such limit)


class QuotaStore:
    """The gateway's client of the quota store: calls bounded by `timeout_s` (then
    `QuotaUnavailable`: admission fails closed), queued and sent as pipelines on `PIPELINES` lanes
    (one round trip in flight per lane, carrying every call that arrived on it meanwhile; a
    tenant's calls always take the same lane, so they reach Redis in order). A Redis that
    restarts is reconnected to by the next call (redis-py reconnects; the scripts, which a new
    server lacks, are loaded again on NOSCRIPT)."""

    def __init__(self, url: str, password: str | None = None, timeout_s: float = STORE_TIMEOUT_S, lease_s: float = 600.0,
                 ca_file: str | None = None):  # fmt: skip
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.timeout_s = timeout_s
        self.lease_ms = lease_s * 1000
        # One immediate retry, on a broken connection only (here and in `_send`): after the store
        # restarts, each pooled connection fails once and is replaced, and no request should be
        # refused for it. Never on a timeout (the script may have run): the caller answers 503.
        # One connection per pipeline in flight (and one for loading scripts).
        pool = aioredis.BlockingConnectionPool.from_url(
            # (reads in `_send` are bounded once per pipeline, not by the socket timeout per reply)
            url, password=password, socket_timeout=SETTLE_TIMEOUT_S, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)), health_check_interval=0,
            max_connections=PIPELINES + 1, timeout=SETTLE_TIMEOUT_S, **({"ssl_ca_certs": ca_file} if ca_file else {}),
        )  # fmt: skip
        self.redis = aioredis.Redis(connection_pool=pool)
        self._script = self.redis.register_script(ACQUIRE)
        self._prefix = secrets.token_hex(6)
        self._ids = itertools.count()
        # per lane: (script, keys, args, reply future) for its next pipeline, and whether one is out
        self._lanes: list[list[tuple]] = [[] for _ in range(PIPELINES)]
        self._busy = [False] * PIPELINES
        self._tasks: set[asyncio.Task] = set()

    @classmethod
    def from_env(cls, **kwargs) -> QuotaStore | None:
        """The store named by `PALISERVE_QUOTA_STORE_URL` (password: `PALISERVE_QUOTA_STORE_PASSWORD`
        or the file `PALISERVE_QUOTA_STORE_PASSWORD_FILE`; for rediss://, the certificate to trust:
        `PALISERVE_QUOTA_STORE_CA_FILE`), or None when none is configured."""
        url = os.environ.get(URL_ENV)
        if not url:
            return None
        password = os.environ.get(PASSWORD_ENV)
        if password is None and os.environ.get(PASSWORD_FILE_ENV):
            password = Path(os.environ[PASSWORD_FILE_ENV]).read_text().strip()
        return cls(url, password, ca_file=os.environ.get(CA_FILE_ENV) or None, **kwargs)

    def new_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    async def acquire(self, tenant: str, limits: TenantLimits, request_id: str, now_ms: float | None = None) -> Rejection | None:
        """Admit one request under `limits` (counting it, with a lease on a concurrency slot) or
        say which limit it hits and when to retry. `now_ms`: tests only (default: Redis's clock)."""
        return self.reply(await self.call(tenant, limits, request_id, now_ms=now_ms), tenant, limits).rejection

    def settle_soon(self, tenant: str, request_id: str, tokens: int, now_ms: float | None = None) -> asyncio.Future:
        """A request admitted by `acquire` has ended having used `tokens` (0 if it failed early):
        queued for the next pipeline at once; the future says how it went (QuotaUnavailable)."""
        return self.call(tenant, None, settles=[(request_id, int(tokens))], now_ms=now_ms, timeout_s=SETTLE_TIMEOUT_S)

    def call(
        self, tenant: str, limits: TenantLimits | None, request_id: str = "", *, credit: int = 0, gateways: int = 1,
        held: int = 0, credit_id: str = "", settles=(), restamps=(), returns=(), now_ms: float | None = None,
        timeout_s: float | None = None,
    ) -> asyncio.Future:  # fmt: skip
        """Queue one script call for `tenant`: its bookkeeping (`settles`: (id, tokens) of ended
        requests; `restamps`: (member, Redis ms) of credit used later than reserved; `returns`:
        credit members never used), then admit `request_id` (if any) under `limits`, then reserve
        up to `credit` (as members `<credit_id>.<n>`) if the headroom allows it with `gateways`
        replicas and `held` credit already held. The future's raw reply reads with `reply`."""
        rpm, tpm, conc = (-1, -1, -1) if limits is None else (
            _limit(limits.requests_per_min), _limit(limits.tokens_per_min), _limit(limits.max_concurrency))
        args = [request_id, rpm, tpm, conc, self.lease_ms, WINDOW_S * 1000, "" if now_ms is None else now_ms,
                credit, gateways, credit_id, len(settles), len(restamps), len(returns), held]  # fmt: skip
        for pair in settles:
            args.extend(pair)
        for pair in restamps:
            args.extend(pair)
        args.extend(returns)
        return self._submit(self._script, keys(tenant), args, self.timeout_s if timeout_s is None else timeout_s)

    @staticmethod
    def reply(raw: list, tenant: str, limits: TenantLimits | None) -> Reply:
        limit, usage, retry_ms, granted, now_ms, tokens_left = raw
        limit = limit.decode() if isinstance(limit, bytes) else limit
        rejection = None
        if limit:
            retry_s = CONCURRENCY_RETRY_S if limit == "max_concurrency" else max(0.0, retry_ms / 1000)
            rejection = Rejection(limit, _message(limit, tenant, limits, int(usage)), retry_s)
        return Reply(rejection, int(granted), float(now_ms), None if tokens_left < 0 else int(tokens_left))

    def _submit(self, script, keys_: list[str], args: list, timeout_s: float) -> asyncio.Future:
        """Queue one script call on its tenant's lane; its reply future fails with
        QuotaUnavailable after `timeout_s`. A call that times out may still run in Redis (its
        lease then lapses on its own)."""
        loop = asyncio.get_running_loop()
        reply = loop.create_future()
        lane = hash(keys_[0]) % PIPELINES
        self._lanes[lane].append((script, keys_, args, reply))
        if not self._busy[lane]:
            self._busy[lane] = True
            task = loop.create_task(self._pipeline(lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        timer = loop.call_later(timeout_s, _expire, reply)
        reply.add_done_callback(lambda _, timer=timer: timer.cancel())
        return reply

    async def _pipeline(self, lane: int) -> None:
        """Send what is queued on `lane` as one pipeline (one round trip for every call waiting),
        again while calls keep arriving: under load each trip carries many calls. The next trip
        leaves once this one's replies are read, so Redis runs a lane's calls in order."""
        pending = self._lanes[lane]
        try:
            while pending:
                batch = pending[:MAX_BATCH]
                del pending[:MAX_BATCH]
                batch = [call for call in batch if not call[3].done()]  # timed out while queued
                if batch:
                    await self._send(batch)
        finally:
            self._busy[lane] = False

    async def _send(self, batch: list, retry: bool = True) -> None:
        """EVALSHA for each call, packed here (redis-py's general packer cost more than the script
        runs), on one pooled connection; replies read in order."""
        pool = self.redis.connection_pool
        try:
            conn = await pool.get_connection()
        except (TimeoutError, OSError, RedisError) as exc:
            return _fail(batch, exc)
        try:
            await conn.send_packed_command(b"".join(_evalsha(s.sha, k, a) for s, k, a, _ in batch), check_health=False)
            replies = []
            async with asyncio.timeout(SETTLE_TIMEOUT_S):  # one timer for the whole pipeline's replies
                for _ in batch:
                    try:
                        replies.append(await conn.read_response(timeout=math.inf))
                    except ResponseError as error:  # an error reply: the stream is still in step
                        replies.append(error)
        except (TimeoutError, OSError, RedisError) as exc:
            await conn.disconnect()
            if retry and isinstance(exc, (RedisConnectionError, ConnectionError)):  # a connection from
                return await self._send(batch, retry=False)  # before a restart: once more, fresh
            return _fail(batch, exc)
        finally:
            await pool.release(conn)
        missing = []
        for call, result in zip(batch, replies):
            reply = call[3]
            if isinstance(result, NoScriptError) and retry:  # a restarted store has no scripts
                missing.append(call)
            elif reply.done():
                continue
            elif isinstance(result, Exception):
                reply.set_exception(QuotaUnavailable(f"{type(result).__name__}: {result}"))
            else:
                reply.set_result(result)
        if missing:
            try:
                for script in {call[0] for call in missing}:
                    await self.redis.script_load(script.script)
            except (TimeoutError, OSError, RedisError):
                pass  # the calls fail below with the store's own error
            await self._send(missing, retry=False)

    async def aclose(self) -> None:
        await self.redis.aclose()


def _evalsha(sha: str, keys_: list[str], args: list) -> bytes:
    """One EVALSHA command in Redis's protocol (RESP)."""
    parts = [b"EVALSHA", sha.encode(), str(len(keys_)).encode(), *(str(x).encode() for x in (*keys_, *args))]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


def _expire(reply: asyncio.Future) -> None:
    if not reply.done():
        reply.set_exception(QuotaUnavailable("TimeoutError: no reply in time"))


def _fail(batch: list, exc: BaseException) -> None:
    failure = QuotaUnavailable(f"{type(exc).__name__}: {exc}")
    for *_, reply in batch:
        if not reply.done():
            reply.set_exception(failure)


def quota_lease_s(request_timeout_s: float) -> float:
    """How long a request may hold a concurrency slot before the store frees it on its own: its
    longest wait in the fair queue (60 s), its timeout, and a minute's slack."""
    return 60.0 + request_timeout_s + 60.0


def _limit(value: int | None) -> int:
    return -1 if value is None else value
