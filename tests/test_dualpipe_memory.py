"""DualPipe / DualPipeV activation peaks against dualpipe.md section 8 (and the W backlog of §9).

Counting rules are section 8's: "in-flight" = micro-batches whose F is done and B not yet, summed
over both chunks, counted after each op (F +1, B -1, [F&B] +1-1); the "F&B transient" also counts
the moment inside an [F&B] where the forward has allocated before the backward frees (before + 1);
"pending-W" keeps a micro-batch whose B deferred its weight-gradient counted until its W.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from schedules.dualpipe import build_dualpipe, build_dualpipev


def _peaks(ops):
    """(boundary peak, transient peak, per-chunk boundary peaks, pending-W peak, max W queue)."""
    live = transient = boundary = pending = pending_peak = queue = queue_peak = 0
    chunk_live, chunk_peak = [0, 0], [0, 0]
    for op in ops:
        if op.kind == "FB":
            transient = max(transient, live + 1)
        for a in op.atoms():
            if a.kind == "F":
                live += 1
                pending += 1
                chunk_live[a.chunk] += 1
            elif a.kind == "B":
                live -= 1
                chunk_live[a.chunk] -= 1
                if a.w_deferred:
                    queue += 1
                else:
                    pending -= 1
            else:  # W
                queue -= 1
                pending -= 1
        boundary = max(boundary, live)
        transient = max(transient, live)
        pending_peak = max(pending_peak, pending)
        queue_peak = max(queue_peak, queue)
        chunk_peak = [max(p, c) for p, c in zip(chunk_peak, chunk_live)]
    assert live == pending == queue == 0
    return boundary, transient, tuple(chunk_peak), pending_peak, queue_peak


# Section 8 table, one row per rank count: (mb tested, boundary peaks rank 0..R-1, c0/c1 peaks).
DUALPIPE_TABLE = {
    2: ((4, 6), [3, 3], [(2, 1), (1, 2)]),
    4: ((8, 10, 12, 20), [4, 5, 5, 4], [(4, 1), (3, 2), (2, 3), (1, 4)]),
    8: ((16, 20, 24), [8, 8, 8, 9, 9, 8, 8, 8], [(8 - r, r + 1) for r in range(8)]),
    16: ((32, 48), [16] * 7 + [17, 17] + [16] * 7, [(16 - r, r + 1) for r in range(16)]),
}
DUALPIPEV_TABLE = {
    2: ((4,), [4, 5], [(4, 1), (3, 2)]),
    3: ((6,), [6, 6, 7], [(6, 1), (5, 2), (4, 3)]),
    4: ((8, 9, 10, 12, 20), [8, 8, 8, 9], [(8, 1), (7, 2), (6, 3), (5, 4)]),
    8: ((16, 20, 24), [16] * 7 + [17], [(16 - r, r + 1) for r in range(8)]),
}


def _rows(table, builder):
    for ranks, (mbs, boundary, per_chunk) in table.items():
        for mb in mbs:
            yield pytest.param(builder, ranks, mb, boundary, per_chunk, id=f"{builder.__name__}-{ranks}-{mb}")


@pytest.mark.parametrize("builder,ranks,mb,boundary,per_chunk",
                         [*_rows(DUALPIPE_TABLE, build_dualpipe), *_rows(DUALPIPEV_TABLE, build_dualpipev)])
def test_peaks_match_section_8(builder, ranks, mb, boundary, per_chunk):
    s = builder(ranks, mb)
    stages = s.num_stages  # PP in the README's "PP+1"
    for r, ops in enumerate(s.ranks):
        b, t, c, pend, _ = _peaks(ops)
        assert b == boundary[r], f"rank {r}"
        assert t == stages + 1, f"rank {r}: every rank reaches PP+1 with the F&B transient"
        assert c == per_chunk[r], f"rank {r}"
        assert c == (stages - s.stage(r, 0), stages - s.stage(r, 1))  # 1F1B's S - stage, per chunk
        assert pend == b, f"rank {r}: pending-W peak equals the in-flight peak"


@pytest.mark.parametrize("P,M", [(2, 4), (4, 8), (4, 14), (8, 16), (8, 20), (8, 30), (16, 32)])
def test_dualpipe_max_w_queue_is_h_plus_1(P, M):
    s = build_dualpipe(P, M)
    assert [_peaks(ops)[4] for ops in s.ranks] == [min(r, P - 1 - r) + 1 for r in range(P)]
    if P == 8:
        assert [_peaks(ops)[4] for ops in s.ranks] == [1, 2, 3, 4, 4, 3, 2, 1]  # section 9


@pytest.mark.parametrize("R,M", [(1, 2), (2, 4), (3, 6), (4, 9), (4, 10), (8, 16)])
def test_dualpipev_max_w_queue_is_r_plus_1(R, M):
    s = build_dualpipev(R, M)
    assert [_peaks(ops)[4] for ops in s.ranks] == [r + 1 for r in range(R)]


def test_fb_halves_hold_each_others_working_set():
    """DeepSeek-V3 interleaves an FB's forward and backward chunk by chunk, so each half holds
    the other's largest transient for its whole span: the partner backward's largest per-layer
    working set (workspace + recompute + a2a), worked out from the stage costs."""
    import pipesim
    from pipesim.memory import CAT

    sc = pipesim.load_scenario(Path(__file__).resolve().parents[1] / "scenarios" / "tiny.toml",
                               {"schedule.name": "dualpipe", "parallel.pp": 2, "training.microbatches": 8})
    res = pipesim.simulate(sc)
    sp, led = res.spans, res.ledger
    pair = [i for i in range(len(sp.start) - 1)
            if sp.op_index[i] == sp.op_index[i + 1] and sp.rank[i] == sp.rank[i + 1]]
    assert pair, "dualpipe has overlapped FB ops"
    for i in pair[:4]:
        b_stage = int(sp.stage[i + 1])
        layers = res.workload.costs[b_stage].layers
        expect = max(L.backward_transient_bytes + L.recompute_bytes + L.a2a_bytes for L in layers)
        own = np.nonzero((led.atom == i) & (led.cat != CAT["p2p"]))[0]   # the F half's template
        first, last = own[0], own[-1]
        assert led.cat[first] == CAT["workspace"] and led.delta[first] == expect
        assert led.cat[last] == CAT["workspace"] and led.delta[last] == -expect
