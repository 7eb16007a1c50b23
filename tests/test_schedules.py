"""Every registered schedule family, over many sizes: it validates, and every F and B (and W
where a B deferred it) runs exactly once per (stage, direction, micro-batch).

The op census here is counted directly from ``placement``/``directions``, not through
``schedules.graph``, so it checks the builders and the validator independently.
"""
from __future__ import annotations

import importlib
from collections import Counter

import pytest

import schedules
from schedules import ScheduleError
from schedules.graph import validate
from schedules.ops import B, F, FB, FB_of

PPS = (1, 2, 3, 4, 8, 16)
CHUNKS = {"interleaved": (None, 3, 4)}


def microbatch_counts(pp: int) -> tuple[int, ...]:
    return tuple(sorted({1, 2, 3, pp, pp + 1, 2 * pp - 1, 2 * pp, 3 * pp}))


def accepts(name: str, pp: int, microbatches: int, chunks: int | None = None) -> bool:
    """Which sizes each family runs, from its documented constraints (not from the builder):
    interleaved sends micro-batches in groups of pp (Narayanan et al. 2021); DualPipe mirrors
    rank r on rank pp-1-r (even pp) and needs an even count >= 2*pp over both directions, as its
    reference implementation asserts; DualPipeV needs >= 2*pp; the others take any size."""
    if name == "interleaved":
        return microbatches % pp == 0
    if name == "dualpipe":
        return pp % 2 == 0 and microbatches % 2 == 0 and microbatches >= 2 * pp
    if name == "dualpipev":
        return microbatches >= 2 * pp
    return True


def build_or_refuse(name: str, pp: int, microbatches: int, chunks: int | None = None):
    """The schedule when the family accepts this size, else None after checking it is refused
    with a ScheduleError naming the argument at fault: a valid size rejected, or an invalid one
    built, fails the test."""
    if accepts(name, pp, microbatches, chunks):
        return schedules.build(name, pp, microbatches, chunks)
    with pytest.raises(ScheduleError) as exc:
        schedules.build(name, pp, microbatches, chunks)
    assert exc.value.param in ("pp", "microbatches"), exc.value
    return None


def census(s: schedules.Schedule) -> Counter:
    seen: Counter = Counter()
    for r, ops in enumerate(s.ranks):
        for op in ops:
            for atom in op.atoms():
                seen[(atom.kind, s.placement[r][atom.chunk], s.directions[r][atom.chunk], atom.mb)] += 1
    return seen


CASES = [(name, pp, m, c) for name in schedules.names() for pp in PPS for m in microbatch_counts(pp)
         for c in CHUNKS.get(name, (None,))]


@pytest.mark.parametrize("name,pp,microbatches,chunks", CASES)
def test_every_op_exactly_once_and_valid(name, pp, microbatches, chunks):
    s = build_or_refuse(name, pp, microbatches, chunks)
    if s is None:
        return
    assert s.name == name and s.pp == pp and s.microbatches == microbatches
    assert len(s.ranks) == len(s.placement) == len(s.directions) == pp
    assert sum(s.stream_microbatches) == microbatches
    # every (stage, direction) is held by exactly one (rank, chunk)
    held = Counter((st, d) for stages, dirs in zip(s.placement, s.directions) for st, d in zip(stages, dirs))
    assert set(held) == {(st, d) for d in range(len(s.stream_microbatches)) for st in range(s.num_stages)}
    assert set(held.values()) == {1}

    seen = census(s)
    deferred = {(s.placement[r][a.chunk], s.directions[r][a.chunk], a.mb)
                for r, ops in enumerate(s.ranks) for op in ops for a in op.atoms() if a.kind == "B" and a.w_deferred}
    expected = Counter()
    for d, count in enumerate(s.stream_microbatches):
        for st in range(s.num_stages):
            for m in range(count):
                expected[("F", st, d, m)] = expected[("B", st, d, m)] = 1
                if (st, d, m) in deferred:
                    expected[("W", st, d, m)] = 1
    assert seen == expected
    if not s.splits_w:
        assert not deferred
    validate(s)  # returns None when fine; raises otherwise


@pytest.mark.parametrize("name", ["zb-h1", "zb-v"])
def test_zero_bubble_families_split_every_backward(name):
    s = schedules.build(name, 4, 8)
    assert s.splits_w
    kinds = Counter(a.kind for ops in s.ranks for op in ops for a in op.atoms())
    bs = [a for ops in s.ranks for op in ops for a in op.atoms() if a.kind == "B"]
    assert all(b.w_deferred for b in bs)
    assert kinds["W"] == kinds["B"] == kinds["F"] == 4 * 8 * (2 if name == "zb-v" else 1)


def test_family_metadata():
    s = schedules.build("interleaved", 4, 8, 3)
    assert (s.chunks, s.num_stages) == (3, 12)
    assert [s.stage(r, c) for r in range(4) for c in range(3)] == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    v = schedules.build("zb-v", 4, 8)
    assert (v.chunks, v.num_stages) == (2, 8)
    assert [v.placement[r] for r in range(4)] == [(0, 7), (1, 6), (2, 5), (3, 4)]
    assert schedules.build("interleaved", 4, 8).chunks == 2  # default V
    for name in ("gpipe", "1f1b", "zb-h1"):
        s = schedules.build(name, 3, 5)
        assert (s.chunks, s.num_stages, s.placement) == (1, 3, ((0,), (1,), (2,)))


def test_hand_written_small_orders():
    """Tiny cases written out by hand from the phase formulas in each module's docstring."""
    def text(name, pp, m):
        return schedules.build(name, pp, m).text().splitlines()

    assert text("gpipe", 2, 2) == ["r0: F0.0 F0.1 B0.0 B0.1", "r1: F0.0 F0.1 B0.0 B0.1"]
    # 1F1B pp=3, M=4: warm-up 2, 1, 0 forwards
    assert text("1f1b", 3, 4) == [
        "r0: F0.0 F0.1 F0.2 B0.0 F0.3 B0.1 B0.2 B0.3",
        "r1: F0.0 F0.1 B0.0 F0.2 B0.1 F0.3 B0.2 B0.3",
        "r2: F0.0 B0.0 F0.1 B0.1 F0.2 B0.2 F0.3 B0.3",
    ]
    # ZB-H1 pp=2, M=3: rank 0 runs each W right after its B; rank 1 keeps one W pending
    assert text("zb-h1", 2, 3) == [
        "r0: F0.0 F0.1 B0.0* W0.0 F0.2 B0.1* W0.1 B0.2* W0.2",
        "r1: F0.0 B0.0* F0.1 B0.1* W0.0 F0.2 B0.2* W0.1 W0.2",
    ]
    # interleaved pp=2, V=2, M=2: rank 0 warm-up (2-0-1)*2 + (2-1)*2 = 4 = all forwards; rank 1 warm-up 2
    assert text("interleaved", 2, 2) == [
        "r0: F0.0 F0.1 F1.0 F1.1 B1.0 B1.1 B0.0 B0.1",
        "r1: F0.0 F0.1 F1.0 B1.0 F1.1 B1.1 B0.0 B0.1",
    ]
    # ZB-V pp=2, M=3 (N = max(3, 2*2-1) = 3). Rank 0: 3 F0; 2 turn steps; 1 steady step (no F0
    # left); 2 chunk-0 cool-down steps. Rank 1: 1 F0; 1 (F1, F0); 1 turn step; 1 steady step;
    # 1 (B0, B1); 1 (B0, oldest W0); drain W1 then W0.
    assert text("zb-v", 2, 3) == [
        "r0: F0.0 F0.1 F0.2 F1.0 B1.0* W1.0 F1.1 B1.1* W1.1 B0.0* W0.0 F1.2 B1.2* W1.2 B0.1* W0.1 B0.2* W0.2",
        "r1: F0.0 F1.0 F0.1 F1.1 B1.0* W1.0 F0.2 B0.0* W0.0 F1.2 B1.1* W1.1 B0.1* B1.2* B0.2* W0.1 W1.2 W0.2",
    ]


def test_fb_of_is_the_shared_fb_of_its_halves():
    fb = FB_of(3, 0, 1, 1)
    assert fb == FB(F(3, 0), B(1, 1)) and str(fb) == "[F0.3&B1.1]"
    assert fb is FB_of(3, 0, 1, 1) and fb.forward is F(3, 0) and fb.backward is B(1, 1)


@pytest.mark.parametrize("name", ["dualpipe", "dualpipev"])
def test_dualpipe_families_share_equal_ops(name):
    # the simulator reads each distinct op object once; equal ops (and FB halves) must be one object
    ops = [op for rank in schedules.build(name, 4, 16).ranks for op in rank]
    atoms = [a for op in ops for a in op.atoms()]
    for group in (ops, atoms):
        assert len({id(op) for op in group}) == len(set(group))


@pytest.mark.parametrize("name,pp,m,chunks,param", [
    ("no-such", 4, 8, None, "name"), ("1f1b", 0, 8, None, "pp"), ("1f1b", 4, 0, None, "microbatches"),
    ("1f1b", 4, 8, 0, "chunks"), ("gpipe", 4, 8, 2, "chunks"), ("interleaved", 4, 8, 1, "chunks"),
    ("interleaved", 4, 6, 2, "microbatches"), ("zb-v", 4, 8, 3, "chunks"), ("dualpipe", 3, 12, None, "pp"),
    ("dualpipe", 4, 7, None, "microbatches"), ("dualpipe", 4, 8, 3, "chunks"), ("dualpipev", 4, 7, None, "microbatches"),
])
def test_each_constraint_error_names_the_argument_at_fault(name, pp, m, chunks, param):
    with pytest.raises(ScheduleError) as err:
        schedules.build(name, pp, m, chunks)
    assert err.value.param == param
