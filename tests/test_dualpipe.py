"""DualPipe / DualPipeV order against the reference's recorded behaviour.

Every expected value here comes from docs/reference/dualpipe.md (traces of
deepseek-ai/DualPipe run on CPU), never from schedules.dualpipe itself.
"""
from __future__ import annotations

from collections import Counter

import pytest

import schedules
from schedules import ScheduleError, parse_op
from schedules.dualpipe import build_dualpipe, build_dualpipev

# dualpipe.md section 3, "Worked example: DualPipe, P=4, num_chunks=8, executed trace".
TRACE_P4_M8 = """\
r0: F0.0 F0.1 F0.2 F1.0 B1.0* W1.0 F1.1 [F0.3&B1.1] [F1.2&B0.0] B1.2 [F1.3&B0.1] B1.3 B0.2* W0.2 B0.3* W0.3
r1: F0.0 F1.0 F0.1 F1.1 F0.2 B1.0 [F1.2&B0.0] [F0.3&B1.1] [F1.3&B0.1] B1.2 B0.2 B1.3* B0.3* W1.3 W0.3
r2: F1.0 F0.0 F1.1 F0.1 F1.2 B0.0 [F0.2&B1.0] [F1.3&B0.1] [F0.3&B1.1] B0.2 B1.2 B0.3* B1.3* W0.3 W1.3
r3: F1.0 F1.1 F1.2 F0.0 B0.0* W0.0 F0.1 [F1.3&B0.1] [F0.2&B1.0] B0.2 [F0.3&B1.1] B0.3 B1.2* W1.2 B1.3* W1.3"""

# dualpipe.md section 3, DualPipe P=8 with 20 micro-batches, rank 0 (README "Device 0").
TRACE_P8_M20_R0 = """\
F0.0 F0.1 F0.2 F0.3 F0.4 F0.5 F0.6 F1.0 B1.0* W1.0 F1.1 B1.1* W1.1 F1.2 B1.2* W1.2 F1.3 [F0.7&B1.3]
[F1.4&B0.0] [F0.8&B1.4] [F1.5&B0.1] [F0.9&B1.5] [F1.6&B0.2] B1.6 [F1.7&B0.3] B1.7 [F1.8&B0.4] B1.8
[F1.9&B0.5] B1.9 B0.6* W0.6 B0.7* W0.7 B0.8* W0.8 B0.9* W0.9"""

DUALPIPE_CASES = [(2, 4), (2, 6), (2, 10), (4, 8), (4, 10), (4, 12), (4, 20), (6, 12), (6, 18),
                  (8, 16), (8, 20), (8, 24), (8, 40), (16, 32), (16, 48), (16, 50)]
DUALPIPEV_CASES = [(1, 2), (1, 3), (1, 7), (2, 4), (2, 5), (2, 9), (3, 6), (3, 7), (3, 11),
                   (4, 8), (4, 9), (4, 10), (4, 12), (4, 20), (8, 16), (8, 20), (8, 24), (8, 31)]


def _constants(s, r):
    """(H, h, C, special) per dualpipe.md section 3's constants table."""
    if s.name == "dualpipe":
        P = s.pp
        h = min(r, P - 1 - r)
        return P // 2, h, s.microbatches // 2, h == P // 2 - 1
    R = s.pp
    return R, r, s.microbatches, r == R - 1


def _local(op, flip):
    """The op with its chunk replaced by the reference's local phase (chunk XOR flip)."""
    if op.kind == "FB":
        return ("FB", _local(op.forward, flip), _local(op.backward, flip))
    return (op.kind, op.mb, op.chunk ^ flip, op.w_deferred)


def _all_cases():
    return [build_dualpipe(p, m) for p, m in DUALPIPE_CASES] + [build_dualpipev(r, m) for r, m in DUALPIPEV_CASES]


# --- exact traces ---------------------------------------------------------------------------

def test_p4_m8_trace_equals_reference_line_for_line():
    s = build_dualpipe(4, 8)
    assert s.text() == TRACE_P4_M8
    for r, line in enumerate(TRACE_P4_M8.splitlines()):
        assert s.ranks[r] == tuple(parse_op(t) for t in line.split()[1:])


def test_p8_m20_rank0_trace_equals_reference():
    expected = TRACE_P8_M20_R0.split()
    got = [str(op) for op in build_dualpipe(8, 20).ranks[0]]
    assert got == expected
    assert build_dualpipe(8, 20).ranks[0] == tuple(parse_op(t) for t in expected)


def test_registry_builds_the_same_schedules():
    assert schedules.build("dualpipe", pp=4, microbatches=8).text() == TRACE_P4_M8
    assert schedules.build("dualpipe", 4, 8, chunks=2) == build_dualpipe(4, 8)
    assert schedules.build("dualpipev", 4, 10) == build_dualpipev(4, 10, 2)


# --- placement --------------------------------------------------------------------------------

def test_dualpipe_placement_and_streams():
    s = build_dualpipe(8, 20)
    assert (s.num_stages, s.chunks, s.stream_microbatches, s.splits_w) == (8, 2, (10, 10), True)
    for r in range(8):
        assert s.stage(r, 0) == r and s.direction(r, 0) == 0
        assert s.stage(r, 1) == 7 - r and s.direction(r, 1) == 1
    assert s.locate(0, 1) == (7, 1)  # direction 1 enters at rank P-1


def test_dualpipev_placement_and_stream():
    s = build_dualpipev(4, 9)
    assert (s.num_stages, s.chunks, s.stream_microbatches, s.splits_w) == (8, 2, (9,), True)
    for r in range(4):
        assert s.placement[r] == (r, 7 - r) and s.directions[r] == (0, 0)


# --- per-rank totals (section 3, "Per-rank totals") ---------------------------------------------

@pytest.mark.parametrize("s", _all_cases(), ids=lambda s: f"{s.name}-{s.pp}-{s.microbatches}")
def test_per_rank_totals(s):
    for r, ops in enumerate(s.ranks):
        H, h, C, special = _constants(s, r)
        atoms = Counter(a.kind for op in ops for a in op.atoms())
        per_chunk_f = Counter(a.chunk for op in ops for a in op.atoms() if a.kind == "F")
        per_chunk_b = Counter(a.chunk for op in ops for a in op.atoms() if a.kind == "B")
        n_fb = sum(op.kind == "FB" for op in ops)
        n_deferred = sum(op.kind == "B" and op.w_deferred for op in ops)
        assert atoms["F"] == 2 * C  # DualPipe: num_chunks; DualPipeV: 2*num_chunks
        assert atoms["B"] == 2 * C
        assert per_chunk_f == {0: C, 1: C} and per_chunk_b == {0: C, 1: C}
        assert atoms["W"] == 2 * H - h - 1 == n_deferred
        assert n_fb == 2 * (C - 2 * H + h + 1) + (H - h - 1) - int(special)
        assert len(ops) == sum(atoms.values()) - n_fb


@pytest.mark.parametrize("s", _all_cases(), ids=lambda s: f"{s.name}-{s.pp}-{s.microbatches}")
def test_overlapped_backwards_are_full_and_pair_the_other_chunk(s):
    for ops in s.ranks:
        for op in ops:
            if op.kind == "FB":
                assert not op.backward.w_deferred
                assert op.forward.chunk != op.backward.chunk


@pytest.mark.parametrize("s", _all_cases(), ids=lambda s: f"{s.name}-{s.pp}-{s.microbatches}")
def test_special_rank_first_main_pair_is_not_overlapped(s):
    """Step 4, i=0 on the middle ranks (DualPipe) / tip rank (DualPipeV): F0 then full B1."""
    for r, ops in enumerate(s.ranks):
        H, h, C, special = _constants(s, r)
        # Ops before step 4: steps 1-3 issue 2(H-h-1) + 2(h+1) + 3(H-h-1) ops.
        start = 5 * (H - h - 1) + 2 * (h + 1)
        flip = int(s.name == "dualpipe" and r >= H)
        first = [_local(op, flip) for op in ops[start:start + 2]]
        if special:
            assert first[0][0] == "F" and first[0][2] == 0  # F0 ...
            assert first[1][0] == "B" and first[1][2] == 1 and first[1][3] is False  # ... then full B1
        else:
            assert first[0][0] == "FB" and first[0][1][2] == 0 and first[0][2][2] == 1


# --- symmetry and the V fold (section 2) --------------------------------------------------------

@pytest.mark.parametrize("P,M", [c for c in DUALPIPE_CASES])
def test_mirror_ranks_run_identical_local_phase_programs(P, M):
    s = build_dualpipe(P, M)
    for r in range(P // 2):
        mirror = P - 1 - r
        assert [_local(op, 0) for op in s.ranks[r]] == [_local(op, 1) for op in s.ranks[mirror]]


@pytest.mark.parametrize("R,N", [(2, 4), (4, 8), (4, 10), (4, 12), (8, 16), (8, 24)])
def test_dualpipev_rank_equals_first_half_of_dualpipe(R, N):
    v = build_dualpipev(R, N)
    d = build_dualpipe(2 * R, 2 * N)
    for r in range(R):
        # On DualPipe's first half the local phase is the chunk, as in DualPipeV.
        assert [_local(op, 0) for op in v.ranks[r]] == [_local(op, 0) for op in d.ranks[r]]


# --- completeness ---------------------------------------------------------------------------

@pytest.mark.parametrize("s", _all_cases(), ids=lambda s: f"{s.name}-{s.pp}-{s.microbatches}")
def test_every_f_and_b_once_per_stage_direction_microbatch(s):
    seen = Counter()
    for r, ops in enumerate(s.ranks):
        for op in ops:
            for a in op.atoms():
                if a.kind in "FB":
                    seen[(a.kind, s.stage(r, a.chunk), s.direction(r, a.chunk), a.mb)] += 1
    expected = {(k, stage, d, mb): 1 for k in "FB" for stage in range(s.num_stages)
                for d, n in enumerate(s.stream_microbatches) for mb in range(n)}
    assert dict(seen) == expected


@pytest.mark.parametrize("s", _all_cases(), ids=lambda s: f"{s.name}-{s.pp}-{s.microbatches}")
def test_every_deferred_b_has_exactly_one_later_w_in_fifo_order(s):
    for ops in s.ranks:
        deferred = [(i, (op.mb, op.chunk)) for i, op in enumerate(ops) if op.kind == "B" and op.w_deferred]
        ws = [(i, (op.mb, op.chunk)) for i, op in enumerate(ops) if op.kind == "W"]
        assert [key for _, key in deferred] == [key for _, key in ws]  # FIFO pop order
        assert all(bi < wi for (bi, _), (wi, _) in zip(deferred, ws))
        assert len(set(key for _, key in deferred)) == len(deferred)


@pytest.mark.parametrize("s", _all_cases(), ids=lambda s: f"{s.name}-{s.pp}-{s.microbatches}")
def test_graph_validates(s):
    graph = pytest.importorskip("schedules.graph")
    graph.validate(s)


# --- constraints (section 7) ----------------------------------------------------------------

@pytest.mark.parametrize("P", [1, 3, 5, 7])
def test_dualpipe_rejects_odd_pp(P):
    with pytest.raises(ScheduleError, match="even pp"):
        build_dualpipe(P, 4 * P)


@pytest.mark.parametrize("P,M", [(4, 9), (4, 7), (4, 6), (2, 2), (8, 14), (16, 20), (16, 30)])
def test_dualpipe_rejects_bad_microbatch_counts(P, M):
    with pytest.raises(ScheduleError) as e:
        build_dualpipe(P, M)
    assert f"even number of micro-batches >= 2*pp (={2 * P} for pp={P}); got {M}" in str(e.value)


def test_dualpipe_message_for_pp16_mb20():
    with pytest.raises(ScheduleError) as e:
        build_dualpipe(16, 20)
    assert str(e.value) == "dualpipe needs an even number of micro-batches >= 2*pp (=32 for pp=16); got 20"


@pytest.mark.parametrize("P,M", [(2, 4), (4, 8), (16, 32), (6, 12)])
def test_dualpipe_accepts_the_bound(P, M):
    assert len(build_dualpipe(P, M).ranks) == P


@pytest.mark.parametrize("builder", [build_dualpipe, build_dualpipev])
@pytest.mark.parametrize("chunks", [1, 3, 4, 0, True, 2.0])
def test_rejects_chunks_other_than_none_or_2(builder, chunks):
    with pytest.raises(ScheduleError, match="None or 2"):
        builder(4, 16, chunks)


@pytest.mark.parametrize("builder", [build_dualpipe, build_dualpipev])
@pytest.mark.parametrize("pp,M,what", [(0, 8, "pp"), (-2, 8, "pp"), (2, 0, "microbatches"),
                                       (2, -4, "microbatches")])
def test_rejects_nonpositive_pp_and_microbatches(builder, pp, M, what):
    with pytest.raises(ScheduleError, match=f"{what} to be an integer >= 1"):
        builder(pp, M)


@pytest.mark.parametrize("R,M", [(1, 1), (2, 3), (3, 5), (4, 7), (8, 15)])
def test_dualpipev_rejects_fewer_than_2r_microbatches(R, M):
    with pytest.raises(ScheduleError) as e:
        build_dualpipev(R, M)
    assert str(e.value) == f"dualpipev needs micro-batches >= 2*pp (={2 * R} for pp={R}); got {M}"


@pytest.mark.parametrize("R,M", [(3, 6), (4, 9), (1, 2), (5, 10), (7, 15)])
def test_dualpipev_accepts_odd_ranks_and_odd_microbatches(R, M):
    assert len(build_dualpipev(R, M).ranks) == R


@pytest.mark.parametrize("s", _all_cases(), ids=lambda s: f"{s.name}-{s.pp}-{s.microbatches}")
def test_runs_to_completion_under_data_dependencies(s):
    """Each rank runs its ops in order; an op starts once its inputs exist: F after the previous
    stage's F of that micro-batch, B after its own F and the next stage's B, W after its B.
    (An independent check, kept until schedules.graph lands.)"""
    done = set()

    def needs(r, a):
        stage, d = s.stage(r, a.chunk), s.direction(r, a.chunk)
        if a.kind == "F":
            return [("F", stage - 1, d, a.mb)] if stage > 0 else []
        if a.kind == "B":
            later = [("B", stage + 1, d, a.mb)] if stage < s.num_stages - 1 else []
            return [("F", stage, d, a.mb)] + later
        return [("B", stage, d, a.mb)]  # W

    pos = [0] * len(s.ranks)
    progressed = True
    while progressed:
        progressed = False
        for r, ops in enumerate(s.ranks):
            while pos[r] < len(ops) and all(n in done for a in ops[pos[r]].atoms() for n in needs(r, a)):
                for a in ops[pos[r]].atoms():
                    done.add((a.kind, s.stage(r, a.chunk), s.direction(r, a.chunk), a.mb))
                pos[r] += 1
                progressed = True
    stuck = {r: str(ops[pos[r]]) for r, ops in enumerate(s.ranks) if pos[r] < len(ops)}
    assert not stuck, f"deadlock; each stuck rank's next op: {stuck}"
