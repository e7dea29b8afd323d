"""A profile's decode steps as the planner reads them (autoscale/performance.py, step_s): a smaller
batch measured slower than a larger one is taken at the larger one's step."""

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


def test_a_smaller_batch_slower_than_a_larger_one_is_taken_at_the_larger_ones_step():
    # run D's profile (README, "Real size"): batch 2 at 0.63 s, above batch 4's 0.32 s
    perf = _perf((1, 0.36), (2, 0.63), (4, 0.32))
    assert perf.step_s(1, 300) == pytest.approx(0.32)
    assert perf.step_s(2, 300) == pytest.approx(0.32) and perf.step_s(4, 300) == pytest.approx(0.32)


def test_steps_that_grow_with_the_batch_are_read_as_measured():
    perf = _perf((1, 0.30), (2, 0.33), (4, 0.40))
    assert [perf.step_s(b, 300) for b in (1, 2, 3, 4)] == pytest.approx([0.30, 0.33, 0.365, 0.40])
    assert perf.step_s(8, 300) == pytest.approx(0.54)  # along the last segment
