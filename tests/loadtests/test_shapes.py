"""Load shapes: stages, levels and the windows at the plan's target load."""

import pytest

from loadtests.shapes import SHAPES, TARGET, schedule, users_at


def test_steady_is_the_target_for_the_whole_run():
    s = schedule("steady", 30)
    assert s.duration_s == 30
    assert s.at(0).level == 1.0 and s.at(29.9).label == TARGET
    assert s.at(30) is None
    assert s.target_windows() == [(0.0, 30.0)]


def test_step_goes_from_target_to_peak_halfway():
    s = schedule("step", 40, peak_ratio=2.5)
    assert [(st.until_s, st.level, st.label) for st in s.stages] == [(20, 1.0, TARGET), (40, 2.5, "peak")]
    assert s.at(19.9).level == 1.0 and s.at(20).level == 2.5


def test_spike_doubles_the_peak_in_the_middle_and_returns():
    s = schedule("spike", 50, peak_ratio=1.5)
    assert [st.level for st in s.stages] == [1.0, 3.0, 1.0]
    assert s.at(25).label == "spike"
    assert s.target_windows() == [(0.0, 20.0), (30.0, 50.0)]


def test_ramp_climbs_to_the_peak_through_the_target():
    s = schedule("ramp", 60, peak_ratio=2.0)
    levels = [st.level for st in s.stages]
    assert levels == sorted(levels) and levels[-1] == 2.0 and 1.0 in levels
    assert [st.label for st in s.stages if st.level == 1.0] == [TARGET]
    assert s.duration_s == 60


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_has_target_time_and_ends(shape):
    s = schedule(shape, 20, peak_ratio=1.0)
    assert sum(b - a for a, b in s.target_windows()) > 0
    assert s.at(20) is None and s.at(0) is not None


def test_peak_below_target_is_clamped_and_bad_input_rejected():
    assert schedule("step", 10, peak_ratio=0.5).stages[-1].level == 1.0
    with pytest.raises(ValueError, match="shape"):
        schedule("sawtooth", 10)
    with pytest.raises(ValueError, match="duration"):
        schedule("steady", 0)


def test_users_per_tenant_scale_with_the_level():
    assert users_at(1.0, 8) == 8
    assert users_at(2.5, 8) == 20
    assert users_at(0.1, 3) == 1  # a tenant never drops to zero while load is on
    assert users_at(0.0, 3) == 0
