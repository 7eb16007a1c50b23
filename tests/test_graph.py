"""schedules.graph, and the simulator's unit-time run (pipesim.simulator.unit_times), on
hand-built orders with hand-computed answers."""
from __future__ import annotations

import pytest

from schedules import ScheduleError
from schedules.gpipe import single_chunk
from pipesim.schedule_grid import render
from pipesim.simulator import Timing, bubbles, critical_path, run, unit_times
from schedules.graph import build_graph, inputs, key, validate
from schedules.ops import B, F, FB, W, parse_op

import schedules


def two_ranks(r0: str, r1: str, M: int = 2, splits_w: bool = False) -> schedules.Schedule:
    """A pp=2 single-chunk schedule from two lines of op tokens."""
    return single_chunk("hand", 2, M, [[parse_op(t) for t in line.split()] for line in (r0, r1)], splits_w)


def test_key_and_inputs():
    s = schedules.build("interleaved", 2, 2)  # 4 stages; rank 1 chunk 1 holds stage 3
    assert key(s, 1, F(0, 1)) == ("F", 3, 0, 0)
    assert key(s, 0, B(1, 1, True)) == ("B", 2, 0, 1)
    assert inputs(s, ("F", 0, 0, 0)) == ()
    assert inputs(s, ("F", 2, 0, 1)) == (("F", 1, 0, 1),)
    assert inputs(s, ("B", 1, 0, 1)) == (("F", 1, 0, 1), ("B", 2, 0, 1))
    assert inputs(s, ("B", 3, 0, 0)) == (("F", 3, 0, 0),)  # the last stage starts the backward
    assert inputs(s, ("W", 2, 0, 1)) == (("B", 2, 0, 1),)


def test_build_graph_edges():
    s = schedules.build("1f1b", 2, 2)  # r0: F0 F1 B0 B1, r1: F0 B0 F1 B1
    g = build_graph(s)
    f = {(st, m): ("F", st, 0, m) for st in (0, 1) for m in (0, 1)}
    b = {(st, m): ("B", st, 0, m) for st in (0, 1) for m in (0, 1)}
    assert set(g.nodes) == set(f.values()) | set(b.values())
    assert {(u, v, d["why"]) for u, v, d in g.edges(data=True)} == {
        # data: forward down the stages, backward up, each B after its own F
        (f[0, 0], f[1, 0], "data"), (f[0, 1], f[1, 1], "data"),
        (f[1, 0], b[1, 0], "data"), (f[1, 1], b[1, 1], "data"),
        (f[0, 0], b[0, 0], "data"), (f[0, 1], b[0, 1], "data"),
        (b[1, 0], b[0, 0], "data"), (b[1, 1], b[0, 1], "data"),
        # rank order where no data edge already links the pair
        (f[0, 0], f[0, 1], "order"), (f[0, 1], b[0, 0], "order"), (b[0, 0], b[0, 1], "order"),
        (b[1, 0], f[1, 1], "order"),
    }
    assert g.nodes[b[0, 0]]["rank"] == 0 and g.nodes[b[1, 0]]["index"] == 1


def test_timing_hand_computed_1f1b():
    # pp=2, M=2, F=1, B=2. r1: F0 [1,2] B0 [2,4] F1 [4,5] B1 [5,7];
    # r0: F0 [0,1] F1 [1,2] B0 waits for r1's B0 -> [4,6], B1 waits for r1's B1 -> [7,9]
    spans, makespan = unit_times(schedules.build("1f1b", 2, 2))
    assert spans == [[(0, 1), (1, 2), (4, 6), (7, 9)], [(1, 2), (2, 4), (4, 5), (5, 7)]]
    assert makespan == 9
    assert bubbles(spans, makespan) == [3, 3]
    # the longest chain, back from r0's B1 (ends 9): it waited for r1's B1 (ends 7), which
    # followed r1's F1 [4,5], B0 [2,4], F0 [1,2] back to back; r1's F0 waited for r0's F0 [0,1]
    sp = run(schedules.build("1f1b", 2, 2), Timing(f=(1.0, 1.0), b=(2.0, 2.0), w=(0.0, 0.0), hop=(0.0, 0.0)))
    chain = [(int(sp.rank[i]), "FBbW"[sp.kind[i]], int(sp.mb[i])) for i in critical_path(sp)]
    assert chain == [(0, "F", 0), (1, "F", 0), (1, "B", 0), (1, "F", 1), (1, "B", 1), (0, "B", 1)]


def test_timing_deferred_backward_and_w():
    # B* takes B - W = 1, W takes 1. r1: F0 [1,2] B0* [2,3] W0 [3,4]; r0: F0 [0,1] B0* [3,4] W0 [4,5]
    s = two_ranks("F0.0 B0.0* W0.0", "F0.0 B0.0* W0.0", M=1, splits_w=True)
    validate(s)
    spans, makespan = unit_times(s)
    assert spans == [[(0, 1), (3, 4), (4, 5)], [(1, 2), (2, 3), (3, 4)]]
    assert makespan == 5


def test_fb_atoms_start_and_end_together():
    # r1 overlaps F of mb 1 with B of mb 0 (FB = 3 by default). r0: F0 [0,1] F1 [1,2];
    # r1: F0 [1,2], [F1&B0] needs F(0,1) (ends 2) and F(1,0) (ends 2) -> [2,5];
    # r0 B0 needs B(1,0) -> [5,7]; r1 B1 [5,7]; r0 B1 needs B(1,1) -> [7,9]
    s = two_ranks("F0.0 F0.1 B0.0 B0.1", "F0.0 [F0.1&B0.0] B0.1")
    validate(s)
    spans, makespan = unit_times(s)
    assert spans == [[(0, 1), (1, 2), (5, 7), (7, 9)], [(1, 2), (2, 5), (5, 7)]]
    assert makespan == 9
    sp = run(s, Timing(f=(1.0, 1.0), b=(2.0, 2.0), w=(1.0, 1.0), hop=(0.0, 0.0)))
    last = critical_path(sp)[-1]
    assert (sp.rank[last], sp.kind[last], sp.mb[last]) == (0, 1, 1)      # r0's B of mb 1
    # with FB = 2.5 (overlap gains half a unit) everything after it moves 0.5 earlier
    assert unit_times(s, FB=2.5)[1] == 8.5


def test_fb_pairing_an_op_with_its_own_producer_deadlocks():
    # the last stage's B of mb 0 needs its F of mb 0: they cannot start together
    s = two_ranks("F0.0 B0.0", "[F0.0&B0.0]", M=1)
    with pytest.raises(ScheduleError, match=r"deadlocks") as err:
        validate(s)
    assert "F(stage 1, mb 0)" in str(err.value) and "F and B of one FB start together" in str(err.value)
    assert ">>[F0.0&B0.0]<<" in str(err.value)
    with pytest.raises(ScheduleError, match="deadlocks"):
        unit_times(s)


def test_swapped_pair_deadlock_is_named():
    # 1F1B pp=2, M=2 with rank 1's pair (B0, F1) swapped to (F1, B0) while rank 0 keeps B0 before F1:
    #   F(1, mb1) needs F(0, mb1) (data), which rank 0 runs after B(0, mb0) (order),
    #   which needs B(1, mb0) (data), which rank 1 now runs after F(1, mb1) (order).
    s = two_ranks("F0.0 B0.0 F0.1 B0.1", "F0.0 F0.1 B0.0 B0.1")
    with pytest.raises(ScheduleError) as err:
        validate(s)
    msg = str(err.value)
    assert "deadlocks" in msg
    for op in ("F(stage 1, mb 1)", "F(stage 0, mb 1)", "B(stage 0, mb 0)", "B(stage 1, mb 0)"):
        assert op in msg
    assert ">>B0.0<<" in msg and ">>F0.1<<" in msg  # marked in the ranks' orders
    with pytest.raises(ScheduleError, match="rank 1 op #1 F0.1 waits for F\\(stage 0, mb 1\\)"):
        unit_times(s)


def test_b_before_its_own_forward_deadlocks():
    s = two_ranks("F0.0 B0.0", "B0.0 F0.0", M=1)
    with pytest.raises(ScheduleError, match=r"B\(stage 1, mb 0\) on rank 1") as err:
        validate(s)
    assert "F(stage 1, mb 0) on rank 1" in str(err.value)


def test_missing_duplicate_and_unexpected_ops():
    with pytest.raises(ScheduleError, match=r"missing: B\(stage 1, mb 0\) on rank 1 chunk 0"):
        validate(two_ranks("F0.0 B0.0", "F0.0", M=1))
    with pytest.raises(ScheduleError, match=r"duplicate: F\(stage 0, mb 0\) on rank 0 chunk 0 appears 2 times"):
        validate(two_ranks("F0.0 F0.0 B0.0", "F0.0 B0.0", M=1))
    with pytest.raises(ScheduleError, match=r"missing: W\(stage 0, mb 0\) on rank 0 chunk 0 \(its B deferred it\)"):
        validate(two_ranks("F0.0 B0.0*", "F0.0 B0.0", M=1))
    with pytest.raises(ScheduleError, match=r"unexpected: W\(stage 1, mb 0\).*full backward"):
        validate(two_ranks("F0.0 B0.0", "F0.0 B0.0 W0.0", M=1))


def test_malformed_ops_say_what_is_allowed():
    with pytest.raises(ScheduleError, match=r"chunk 1, allowed 0..0"):
        validate(two_ranks("F0.0 B0.0 F1.0", "F0.0 B0.0", M=1))
    with pytest.raises(ScheduleError, match=r"micro-batch 2, allowed 0..1"):
        validate(two_ranks("F0.0 F0.1 F0.2 B0.0 B0.1", "F0.0 F0.1 B0.0 B0.1"))


def test_render_hand_drawn():
    # the 1F1B pp=2, M=2 times above, one 3-character cell per unit
    assert render(schedules.build("1f1b", 2, 2)).splitlines()[1:4] == [
        "   0              5",
        "r0 F0 F1 .  .  B0--- .  B1---",
        "r1 .  F0 B0--- F1 B1--- .  .",
    ]
    grid = render(schedules.build("zb-v", 2, 4))
    assert "r0 F0a F1a F2a F0b b0b W0b" in grid  # chunk letters, deferred B as 'b'
    # an FB spans FB = F + B = 3 cells
    fb = render(two_ranks("F0.0 F0.1 B0.0 B0.1", "F0.0 [F0.1&B0.0] B0.1")).splitlines()
    assert fb[3] == "r1 .  F0 F1&B0--- B1--- .  ."
