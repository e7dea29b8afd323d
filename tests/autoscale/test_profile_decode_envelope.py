"""A profile's decode steps as the planner reads them (autoscale/performance.py, step_s): a batch
measured slower than both the batches around it is taken at the slower of those two."""

import pytest

from autoscale.catalog import GPU_CATALOG
from autoscale.memory import DTYPE_BYTES
from autoscale.performance import Efficiency, ReplicaPerformance
from autoscale.profile import DecodePoint, PrefillPoint, Profile
from paliserve.random_checkpoint import catalog_architecture


def _perf(*steps: tuple[int, float]) -> ReplicaPerformance:
    profile = Profile(model="m", accelerator="cpu", prefill=[PrefillPoint(text_tokens=10, seconds=6.5)],
                      decode=[DecodePoint(batch=b, step_seconds=s) for b, s in steps])  # fmt: skip
    cpu = GPU_CATALOG["cpu"]
    return ReplicaPerformance(catalog_architecture("paligemma-3b-pt-224"), "bfloat16", DTYPE_BYTES["bfloat16"],
                              "none", cpu, 1.0, 1, Efficiency.of(cpu), 128, profile)  # fmt: skip


def test_a_batch_slower_than_both_its_neighbours_is_taken_at_the_slower_of_them():
    # the profile of 2026-11-30 09:04 (README, "Real size"): batch 2 at 0.58 s between 0.34 and 0.29
    perf = _perf((1, 0.341), (2, 0.577), (4, 0.290))
    assert perf.step_s(1, 300) == pytest.approx(0.341) and perf.step_s(2, 300) == pytest.approx(0.341)
    # batch 4 measured faster than batch 1 (oneDNN streams the weights faster at 4 rows here), read
    # as profile.interpolate reads any falling step: never below a smaller batch's
    assert perf.step_s(4, 300) == pytest.approx(0.341)


def test_the_end_points_and_a_single_point_stay_as_measured():
    assert _perf((1, 0.36), (4, 0.65)).step_s(4, 300) == pytest.approx(0.65)
    assert _perf((1, 0.36),).step_s(4, 300) == pytest.approx(0.36)


def test_steps_that_grow_with_the_batch_are_read_as_measured():
    perf = _perf((1, 0.30), (2, 0.33), (4, 0.40))
    assert [perf.step_s(b, 300) for b in (1, 2, 3, 4)] == pytest.approx([0.30, 0.33, 0.365, 0.40])
    assert perf.step_s(8, 300) == pytest.approx(0.54)  # along the last segment
