"""The ledger of a tiny hand-made case, record for record (SimPy's habit: assert whole logs)."""
import schedules
from pipesim.memory import CATEGORIES, build_ledger, build_templates, p2p_buffers
from pipesim.model import LayerCosts, StageCosts
from pipesim.simulator import Timing, run


def _stage(name):
    layer = LayerCosts(name=name, stored_bytes=100, stored_by_module={"all": 100}, w_bytes=40,
                       forward_transient_bytes=10, recompute_bytes=0, backward_transient_bytes=20,
                       a2a_bytes=0, flops_f=1, flops_b=1, flops_w=1)
    return StageCosts(params=500, weights_bytes=1000, grads_bytes=0, optimizer_bytes=0,
                      gather_bytes=0, boundary_bytes=8, logits_bytes=0, layers=(layer,))


def _ledger(name, microbatches=1, hop=0.5):
    sch = schedules.build(name, pp=2, microbatches=microbatches)
    stages = [_stage("layer 0"), _stage("layer 1")]
    templates = {}
    for s, st in enumerate(stages):
        for kind, tpl in build_templates(st, [0.0], 1).items():
            templates[(s, kind)] = tpl
    # F = 1 s, full B = 2 s (of which W = 1 s), a hop between ranks of `hop` s.
    spans = run(sch, Timing(f=(1.0, 1.0), b=(2.0, 2.0), w=(1.0, 1.0), hop=(hop, hop)))
    static = [{"weights": 1000}, {"weights": 1000}]
    led = build_ledger(spans, templates, static, p2p_buffers(spans, (8, 8)))
    return [(float(t), int(r), CATEGORIES[c], int(d))
            for t, r, c, d in zip(led.time, led.rank, led.cat, led.delta)]


def test_gpipe_two_ranks_one_microbatch_whole_ledger():
    # Worked by hand: rank 0 F [0,1]; arrives at rank 1 at 1.5; rank 1 F [1.5,2.5], B [2.5,4.5];
    # the gradient arrives at rank 0 at 5.0; rank 0 B [5.0,7.0].
    # p2p (8 bytes): rank 0 sends F's output at 1.0 and gets it back at the start of its next op
    # (5.0, after the 1.5 arrival); it posts B's receive when F ends (1.0) and hands it to B at
    # 5.0. Rank 1 posts F's receive at 0 (F is its first op), hands it over at 1.5; it sends B's
    # output at 4.5 and, with no op left, gets the buffer back at the 5.0 arrival.
    expected = [
        (0.0, 0, "weights", 1000),
        (0.0, 0, "activations", 100), (0.0, 0, "workspace", 10), (1.0, 0, "workspace", -10),
        (1.0, 0, "p2p", 8), (1.0, 0, "p2p", 8),                       # send F, post B's receive
        (5.0, 0, "p2p", -8), (5.0, 0, "p2p", -8),                     # send done, B takes its input
        (5.0, 0, "workspace", 20), (7.0, 0, "workspace", -20), (7.0, 0, "activations", -100),
        (0.0, 1, "weights", 1000),
        (0.0, 1, "p2p", 8), (1.5, 1, "p2p", -8),
        (1.5, 1, "activations", 100), (1.5, 1, "workspace", 10), (2.5, 1, "workspace", -10),
        (2.5, 1, "workspace", 20), (4.5, 1, "workspace", -20), (4.5, 1, "activations", -100),
        (4.5, 1, "p2p", 8), (5.0, 1, "p2p", -8),
    ]
    assert _ledger("gpipe") == expected


def test_split_backward_keeps_weight_gradient_inputs_until_w():
    # ZB-H1 defers W: the B releases stored - w = 60 bytes, the W the remaining 40.
    records = _ledger("zb-h1")
    act = [(t, r, d) for t, r, c, d in records if c == "activations"]
    for rank in (0, 1):
        deltas = [d for _, r, d in act if r == rank]
        assert sorted(deltas) == [-60, -40, 100]
        assert sum(deltas) == 0


def test_a_slow_link_keeps_send_buffers_until_the_first_op_after_arrival():
    # Worked by hand, GPipe, 2 ranks, 2 micro-batches, F = 1, B = 2, a hop of 2.5 (longer than F):
    # rank 0 F0 [0,1] F1 [1,2]; rank 1 F0 [3.5,4.5] F1 [4.5,5.5] B0 [5.5,7.5] B1 [7.5,9.5];
    # rank 0 B0 [10,12] (gradient arrives 7.5 + 2.5) B1 [12,14].
    p2p = [(t, r, d) for t, r, c, d in _ledger("gpipe", microbatches=2, hop=2.5) if c == "p2p"]
    assert p2p == [
        # rank 0: F0's output arrives at 3.5, after F1 has started (at 1), so it is returned when
        # the next op, B0, starts at 10; likewise F1's (arrival 4.5). B0's receive is posted when
        # F1 ends (2); B1's when B0 ends, and taken at once.
        (1.0, 0, 8), (2.0, 0, 8), (2.0, 0, 8), (10.0, 0, -8), (10.0, 0, -8), (10.0, 0, -8),
        (12.0, 0, 8), (12.0, 0, -8),
        # rank 1: F0's receive posted at 0 (first op), F1's when F0 ends; its outputs have no op
        # after them, so each is returned at its arrival (10, 12).
        (0.0, 1, 8), (3.5, 1, -8), (4.5, 1, 8), (4.5, 1, -8), (7.5, 1, 8), (9.5, 1, 8),
        (10.0, 1, -8), (12.0, 1, -8),
    ]
