"""Unit tests of the usage accounting: the engine clock's apportionment of busy time by tokens,
and the cache salt (server-side, per tenant and target, none in open mode)."""

import pytest
from PIL import Image

from serve.tenancy.isolation import SECRET_ENV, cache_salt, image_uuid
from serve.tenancy.showback import EngineClock


class FakeTime:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def clock(settle_every_s: float = 1.0):
    now, charged = FakeTime(), {}

    def record(key, seconds):
        charged[key] = charged.get(key, 0.0) + seconds

    return EngineClock(record, now=now, settle_every_s=settle_every_s), now, charged


def test_sequential_requests_get_their_own_busy_time():
    c, now, charged = clock()
    c.start(); now.t += 2.0; c.finish(("a", "m"), 10)  # fmt: skip
    now.t += 50.0  # idle: nobody's
    c.start(); now.t += 0.5; c.finish(("b", "m"), 1000)  # fmt: skip
    assert charged == {("a", "m"): pytest.approx(2.0), ("b", "m"): pytest.approx(0.5)}


def test_overlapping_requests_split_busy_time_by_tokens_and_sum_to_it():
    c, now, charged = clock(settle_every_s=100)
    c.start()  # a: t=100..104
    now.t += 1.0
    c.start()  # b: t=101..103
    now.t += 2.0
    c.finish(("b", "m"), 300)
    now.t += 1.0
    c.finish(("a", "m"), 100)  # idle: settles the 4 busy seconds, 3:1 by tokens
    assert charged[("b", "m")] == pytest.approx(3.0)
    assert charged[("a", "m")] == pytest.approx(1.0)
    assert sum(charged.values()) == pytest.approx(4.0)


def test_busy_replica_settles_periodically_and_time_without_tokens_carries_over():
    c, now, charged = clock(settle_every_s=1.0)
    c.start(); c.start()  # fmt: skip
    now.t += 0.4
    c.finish(("x", "m"), 0)  # refused by the engine: no tokens, its time waits
    assert charged == {}
    now.t += 1.6
    c.start()
    c.finish(("a", "m"), 50)  # 2 s since the clock began, still busy: settled now
    assert charged == {("a", "m"): pytest.approx(2.0)}
    now.t += 3.0
    c.finish(("b", "m"), 10)  # goes idle
    assert charged[("b", "m")] == pytest.approx(3.0)
    assert c.running == 0


def test_cache_salt_is_per_tenant_and_target_and_none_in_open_mode(monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    alice, carol = cache_salt("alice", "m"), cache_salt("carol", "m")
    assert alice and carol and alice != carol
    assert cache_salt("alice", "m") == alice  # stable: the same on every replica
    assert cache_salt("alice", "m:alice-style") != alice
    assert cache_salt(None, "m") is None
    monkeypatch.setenv(SECRET_ENV, "cluster-secret")
    assert cache_salt("alice", "m") != alice  # keyed by the cluster's secret when it has one


def test_image_uuid_is_salted_and_follows_the_pixels():
    red, blue = Image.new("RGB", (28, 28), (200, 0, 0)), Image.new("RGB", (28, 28), (0, 0, 200))
    assert image_uuid("s1", red) == image_uuid("s1", red.copy())
    assert image_uuid("s1", red) != image_uuid("s2", red)
    assert image_uuid("s1", red) != image_uuid("s1", blue)
    assert image_uuid("s1", red) != image_uuid("s1", red.resize((28, 27)))
