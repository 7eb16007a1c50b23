"""Per-rank memory peaks straight from the op spans, without writing out the ledger.

The ledger (``pipesim.memory.build_ledger``) has one record per layer-level allocation or
release: ~27 per atom for DeepSeek-V3, ~870k for 1F1B at pp 16 x 1024. Its peaks can be found
per atom instead of per record, because every atom's records come from one template T of its
(stage, kind) and nothing else happens inside an atom (p2p records sit in the slots between
atoms):

    level after record k of atom a  =  level before a  +  C_T[k]        C_T = cumsum(delta_T)

so atom a's highest record is ``before(a) + max(C_T)``, at T's first argmax. A slot's records
are allocations, then releases, so its highest record is its last allocation that adds bytes:
``before(slot) + Σ allocations``. A rank's stream is therefore ``slot, atom, slot, atom, ..., slot``: one net
and one "highest above the level before" per unit, cumulated with numpy. The peak is the first
unit holding the rank's maximum (the record found in its template or slot), its breakdown the
static bytes plus the category nets of every unit before it. This is exactly the record that
``cumsum`` + first ``argmax`` over the ledger finds (tests/test_peaks.py compares the two on
every schedule family, for peaks inside ops and between them), at a cost per atom instead of per
layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipesim.memory import CAT, CATEGORIES, atom_templates

_NONE = np.iinfo(np.int64).min // 4   # "not a candidate": below any real level


@dataclass(frozen=True)
class PeakRecord:
    """Where one rank peaks: allocated bytes there (before fragmentation), the record's time and
    atom, and the allocated bytes per category (``CATEGORIES`` order) at that record."""

    rank: int
    allocated: int
    time: float
    atom: int                 # -1: a static record
    by_category: np.ndarray   # int64, len(CATEGORIES)


def _template_table(distinct) -> dict:
    """Per distinct template: net, highest prefix, its first index, category nets."""
    ncat = len(CATEGORIES)
    net, top, top_at = [], [], []
    by_cat, by_cat_top = np.zeros((len(distinct), ncat), np.int64), np.zeros((len(distinct), ncat), np.int64)
    for i, t in enumerate(distinct):
        c = np.cumsum(t.delta)
        j = int(np.argmax(c)) if len(c) else -1
        cats = t.cat.astype(np.int64)
        net.append(int(c[-1]) if len(c) else 0)
        top.append(int(c[j]) if len(c) else _NONE)
        top_at.append(j)
        by_cat[i] = np.bincount(cats, weights=t.delta, minlength=ncat).round()
        by_cat_top[i] = np.bincount(cats[:j + 1], weights=t.delta[:j + 1], minlength=ncat).round()
    return {"net": np.array(net, np.int64), "top": np.array(top, np.int64),
            "top_at": top_at, "by_cat": by_cat, "by_cat_top": by_cat_top}


def find_peaks(spans, templates: dict, static_bytes, p2p) -> list[PeakRecord]:
    """The peak record of every rank, as ``build_ledger`` + cumulative sum + first argmax would
    find it (same inputs as ``build_ledger``). A rank whose dynamic memory never rises above
    zero peaks at its static records (t = 0); every rank of a scenario holds weights, so it has
    some."""
    ranks = len(static_bytes)
    n = len(spans.start)
    rank = spans.rank.astype(np.int64)
    bounds = np.searchsorted(rank, np.arange(ranks + 1))
    # each atom's template, as an index into the distinct templates (stages of one shape share
    # theirs, so each is worked out once; an FB's halves use their overlapped variants)
    tid, distinct = atom_templates(spans, templates)
    tab = _template_table(distinct)

    # slots: allocations (sends, then receives posted) come before releases
    n_slots = n + ranks
    sent_slot, posted_slot = p2p.sent_slot, p2p.posted_slot
    sb, rb = p2p.send_bytes.astype(np.float64), p2p.recv_bytes.astype(np.float64)
    s_alloc = np.bincount(sent_slot, weights=sb, minlength=n_slots) + np.bincount(posted_slot, weights=rb, minlength=n_slots)
    s_free = (np.bincount(p2p.release_slot, weights=sb, minlength=n_slots)
              + np.bincount(p2p.recv_slot, weights=rb, minlength=n_slots))
    s_net = (s_alloc - s_free).round().astype(np.int64)
    s_alloc = s_alloc.round().astype(np.int64)
    s_cum = np.concatenate([[0], np.cumsum(s_net)])    # s_cum[s]: nets of slots before s

    # levels relative to the rank's start: before slot s (rank r, preceding atom s - r) come the
    # rank's earlier atoms and slots; before atom a, its earlier atoms and the slots up to a + r
    a_cum = np.concatenate([[0], np.cumsum(tab["net"][tid])])   # a_cum[a]: nets of atoms before a
    a_base, s_base = a_cum[bounds], s_cum[bounds + np.arange(ranks + 1)]
    slot_rank = np.repeat(np.arange(ranks), np.diff(bounds) + 1)
    slot_atom = np.arange(n_slots) - slot_rank
    slot_high = np.where(s_alloc > 0, (s_cum[:-1] - s_base[slot_rank]) + (a_cum[slot_atom] - a_base[slot_rank])
                         + s_alloc, _NONE)
    atom_slot = np.arange(n) + rank + 1
    atom_high = (s_cum[atom_slot] - s_base[rank]) + (a_cum[:-1] - a_base[rank]) + tab["top"][tid]

    out = []
    for r in range(ranks):
        statics = np.zeros(len(CATEGORIES), np.int64)
        for name, nbytes in static_bytes[r].items():
            statics[CAT[name]] += nbytes
        static_total = int(statics.sum())
        lo, hi = int(bounds[r]), int(bounds[r + 1])
        # the first highest unit: slot before atom a comes before atom a
        best_a = lo + int(np.argmax(atom_high[lo:hi])) if hi > lo else -1
        best_s = lo + r + int(np.argmax(slot_high[lo + r:hi + r + 1]))
        high_a = int(atom_high[best_a]) if best_a >= 0 else _NONE
        high_s = int(slot_high[best_s])
        in_slot = high_s > high_a or (high_s == high_a and best_s - r <= best_a)
        dyn = high_s if in_slot else high_a
        if dyn <= 0:
            out.append(PeakRecord(r, static_total, 0.0, -1, statics))
            continue
        a = best_s - r if in_slot else best_a    # the atom of the unit, or the one the slot precedes
        cats = statics + np.bincount(tid[lo:a], minlength=len(distinct)) @ tab["by_cat"]
        s = a + r                          # the slot before atom a
        p2p_bytes = int(s_cum[s] - s_cum[lo + r])     # slots of the rank before slot s
        if in_slot:                        # a slot: its last allocation that adds bytes
            i = np.nonzero((posted_slot == s) & (p2p.recv_bytes > 0))[0]
            if len(i):
                time, atom = float(p2p.posted_time[i[-1]]), int(p2p.recv[i[-1]])
            else:
                i = np.nonzero((sent_slot == s) & (p2p.send_bytes > 0))[0]
                time, atom = float(p2p.sent_time[i[-1]]), int(p2p.send[i[-1]])
            p2p_bytes += int(s_alloc[s])
        else:                              # an atom: its template's highest record
            t = int(tid[a])
            i = tab["top_at"][t]
            tpl = distinct[t]
            time = float(spans.start[a] + tpl.frac[i] * (spans.end[a] - spans.start[a]))
            atom = a
            cats += tab["by_cat_top"][t]
            p2p_bytes += int(s_net[s])
        cats[CAT["p2p"]] += p2p_bytes
        allocated = static_total + dyn
        if int(cats.sum()) != allocated:
            raise AssertionError(f"rank {r}: breakdown {int(cats.sum())} != peak {allocated}")
        out.append(PeakRecord(r, allocated, time, atom, cats))
    return out
