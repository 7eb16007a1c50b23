"""Bad input raises ScheduleError (a ValueError) whose message says what is allowed."""
from __future__ import annotations

import pytest

import schedules
from schedules import ScheduleError


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ScheduleError, match="unknown schedule 'pipedream'; allowed: gpipe, 1f1b, interleaved, zb-h1, zb-v"):
        schedules.build("pipedream", 4, 8)


@pytest.mark.parametrize("name", ["gpipe", "1f1b", "interleaved", "zb-h1", "zb-v"])
@pytest.mark.parametrize("pp,microbatches,field", [(0, 8, "pp"), (-1, 8, "pp"), (4, 0, "microbatches"), (2.0, 8, "pp")])
def test_sizes_must_be_positive_integers(name, pp, microbatches, field):
    with pytest.raises(ScheduleError, match=f"{field} must be an integer >= 1, got"):
        schedules.build(name, pp, microbatches)


@pytest.mark.parametrize("name", ["gpipe", "1f1b", "zb-h1"])
def test_single_chunk_families_reject_chunks(name):
    with pytest.raises(ScheduleError, match=f"{name} holds one chunk per rank: chunks must be 1 or omitted, got 2"):
        schedules.build(name, 4, 8, 2)
    assert schedules.build(name, 4, 8, 1).chunks == 1


def test_zb_v_needs_two_chunks():
    with pytest.raises(ScheduleError, match="chunks must be 2 or omitted, got 3"):
        schedules.build("zb-v", 4, 8, 3)
    assert schedules.build("zb-v", 4, 8, 2).chunks == 2


def test_interleaved_chunks_and_microbatches():
    with pytest.raises(ScheduleError, match=r"interleaved needs chunks >= 2 per rank \(default 2\), got 1; chunks=1 is the '1f1b'"):
        schedules.build("interleaved", 4, 8, 1)
    with pytest.raises(ScheduleError, match="multiple of pp=4 .* got 6; try 4 or 8"):
        schedules.build("interleaved", 4, 6)
    with pytest.raises(ScheduleError, match="multiple of pp=4 .* got 3; try 4"):
        schedules.build("interleaved", 4, 3, 3)
    with pytest.raises(ScheduleError, match="chunks must be an integer >= 1, got 0"):
        schedules.build("interleaved", 4, 8, 0)
    assert isinstance(ScheduleError("x"), ValueError)
