"""Machine-readable outputs, written atomically: ``summary.json``, ``timeline.csv``, ``trace.json``.

The output folder is checked before any work (``check_output``: it can be created and written,
it holds nothing pipesim did not write). Every file of a run is then written into a temporary
folder beside the destination; only when all of them exist does that folder take the
destination's place, in one rename (Linux: an atomic exchange with the old folder), so a failure
or a signal leaves the previous results complete and no temporary folder behind.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import gzip
import json
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from pipesim.memory import CATEGORIES


def summary_json(result) -> str:
    """Deterministic JSON text: sorted keys, fixed rounding (see ``Result.summary``)."""
    return json.dumps(result.summary(), indent=2, sort_keys=True) + "\n"


#: The op columns of ``timeline.csv``: what made each record. ``op`` is the atom's kind (F, B,
#: BI: a backward that defers W, W), or ``static`` for the records at t=0 (weights, optimizer...);
#: ``layer`` the stage's layer as the model names it (``embedding``, ``layer 4 (moe)``, ``mtp 0``,
#: ``head``), empty for static and p2p records and for the other half's transient in an FB.
TIMELINE_HEADER = ("time_ms,rank,category,delta_bytes,rank_total_bytes,"
                   "op,microbatch,stage,chunk,direction,layer")
_ATOM_KINDS = ("F", "B", "BI", "W")
_ROWS_PER_CHUNK = 1 << 16


def timeline_csv(result) -> Iterator[str]:
    """``timeline.csv`` as text chunks (``_ROWS_PER_CHUNK`` rows each), never the whole file in
    memory: one row per ledger record, rank by rank in causal order: time, rank, category, delta,
    the rank's total after it (allocated + fragmentation), and the atom that made it (its kind,
    micro-batch, stage, chunk, direction; empty for static records). A p2p record names the atom
    whose boundary tensor it holds, and the layer (of the atom's stage) whose allocation or release
    it is. Hand it to ``text_writer`` (``.gz`` names are compressed)."""
    yield TIMELINE_HEADER + "\n"
    sp = result.spans
    # the op columns depend on the atom alone: formatted once per atom, not once per record
    ops = [f"{_ATOM_KINDS[k]},{m},{s},{c},{d}" for k, m, s, c, d in
           zip(sp.kind.tolist(), sp.mb.tolist(), sp.stage.tolist(), sp.chunk.tolist(), sp.direction.tolist())]
    ops.append("static,,,,")                 # atom -1
    # layer names by (stage, index) in one flat list; code -1 (no layer) is the empty last entry
    costs = result.workload.costs
    width = max((len(c.layers) for c in costs), default=0)
    layer_names = [c.layers[j].name if j < len(c.layers) else "" for c in costs for j in range(width)] + [""]
    atom_stage = np.append(sp.stage, 0).astype(np.int64)
    names = CATEGORIES
    for r in range(result.ranks):
        times, tot = result.total(r)
        rec = result.records(r)
        ms = times * 1e3
        cats, deltas, atoms = result.ledger.cat[rec], result.ledger.delta[rec], result.ledger.atom[rec]
        layer = result.ledger.layer[rec]
        code = np.where(layer >= 0, atom_stage[atoms] * width + layer, len(layer_names) - 1)
        for lo in range(0, len(ms), _ROWS_PER_CHUNK):
            hi = lo + _ROWS_PER_CHUNK
            yield "".join([f"{t:.6f},{r},{names[c]},{d},{s},{ops[a]},{layer_names[j]}\n" for t, c, d, s, a, j in
                           zip(ms[lo:hi].tolist(), cats[lo:hi].tolist(), deltas[lo:hi].tolist(),
                               tot[lo:hi].tolist(), atoms[lo:hi].tolist(), code[lo:hi].tolist())])


class OutputError(ValueError):
    """An output folder pipesim cannot write; the message names the path and the problem."""


#: The files each pipesim verb writes. A verb's files form one set of results: when a verb
#: writes into a folder, its own files this run did not write (``run --plots none`` after a run
#: with plots, a ``timeline.csv`` after a ``timeline.csv.gz``) are removed, so none is left
#: looking current; other verbs' files are carried over.
VERB_OUTPUTS = {
    "run": frozenset({"summary.json", "timeline.csv", "timeline.csv.gz", "memory.png", "peaks.png",
                      "schedule.png", "trace.json", "trace.json.gz"}),
    "compare": frozenset({"compare.csv", "compare.png"}),
    "sweep": frozenset({"sweep.csv", "sweep.png", "sweep.jsonl"}),
    "search": frozenset({"search.csv", "search.jsonl", "frontier.png"}),
    "sensitivity": frozenset({"sensitivity.csv", "sensitivity.png"}),
    "score": frozenset({"score.json", "score.png"}),
}
#: Every file a pipesim verb writes. An existing output folder holding anything else is not
#: replaced (it is someone's folder, not a results folder): the run is refused before it starts.
OUTPUT_NAMES = frozenset().union(*VERB_OUTPUTS.values())
_TMP_PREFIX = ".pipesim-"


def check_output(out_dir) -> None:
    """``OutputError`` unless ``out_dir`` can become a results folder: it is a folder holding only
    pipesim's files, or it does not exist and its nearest existing parent is a folder where a
    folder can be created (tried, then removed). Writes nothing that stays."""
    text = os.fspath(out_dir)
    if not text:
        raise OutputError("'': an empty output path; give a folder, e.g. -o results/mine")
    if "\0" in text:
        raise OutputError(f"{text!r}: a path cannot contain a NUL character")
    out = Path(text)
    try:
        info = os.stat(out)
    except FileNotFoundError:
        info = None
    except NotADirectoryError:
        raise OutputError(f"{out}: a part of the path is a file, not a folder") from None
    except OSError as exc:
        problem = "a symlink loop" if exc.errno == errno.ELOOP else exc.strerror or exc
        raise OutputError(f"{out}: cannot be an output folder: {problem}") from None
    if info is not None:
        if not stat.S_ISDIR(info.st_mode):
            raise OutputError(f"{out}: exists and is not a folder; give a folder for the outputs")
        try:
            foreign = sorted(e for e in os.listdir(out) if e not in OUTPUT_NAMES)
        except OSError as exc:
            raise OutputError(f"{out}: cannot list the folder: {exc.strerror or exc}") from None
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise OutputError(f"{out}: holds files pipesim did not write ({shown}); the results replace "
                              f"the whole folder, so give a new or empty folder")
    parent = Path(os.path.abspath(out)).parent
    while not os.path.lexists(parent):
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{out}: {parent} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=parent))
    except OSError as exc:
        raise OutputError(f"{out}: cannot create folders in {parent}: {exc.strerror or exc}") from None


def write_outputs(out_dir: Path, writers: dict) -> list[Path]:
    """Write every file of ``writers`` (name -> callable(path)) into a temporary folder beside
    ``out_dir``, then put that folder in ``out_dir``'s place in one step. An existing
    ``out_dir``'s other pipesim files (another verb's) are carried over. On any failure, or
    a signal, nothing changes: no new file, no temporary folder, no parent folder made."""
    out = Path(out_dir)
    check_output(out)
    target = Path(os.path.realpath(out))    # through a symlink, the folder it names is replaced
    made = _make_parents(target.parent)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=target.parent))
        for name, write in writers.items():
            write(tmp / name)
        if os.path.isdir(target):
            os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
            for entry in sorted(set(os.listdir(target)) & _carried(set(writers))):
                shutil.copy2(target / entry, tmp / entry)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)
        with _signals_held():
            if os.path.isdir(target):
                _swap(tmp, target)         # tmp now holds the previous results, removed below
            else:
                os.rename(tmp, target)
                tmp = None
            _discard(tmp)
    except BaseException as exc:
        with _signals_held():
            _discard(tmp)
            _remove_parents(made)
        if isinstance(exc, OSError):
            raise OutputError(f"{out}: could not write the outputs: {exc.strerror or exc}") from None
        raise
    return [out / name for name in writers]


def _carried(written: set[str]) -> frozenset[str]:
    """The pipesim files of a folder that survive a write of ``written``: those of the verbs that
    wrote none of ``written`` (see ``VERB_OUTPUTS``)."""
    return frozenset().union(*(names for names in VERB_OUTPUTS.values() if not names & written))


def _discard(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _signals_held():
    """SIGINT and SIGTERM wait (they are delivered at the end) while a few renames and removals
    run, so that no signal lands between two of them."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the ones made, outermost first."""
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    made = []
    try:
        for d in reversed(missing):
            os.mkdir(d)
            made.append(d)
    except BaseException:
        _remove_parents(made)
        raise
    return made


def _remove_parents(made: list[Path]) -> None:
    for d in reversed(made):
        try:
            os.rmdir(d)
        except OSError:
            pass


def _swap(new: Path, old: Path) -> None:
    """Exchange folders ``new`` and ``old``: one atomic ``renameat2(RENAME_EXCHANGE)`` on Linux;
    elsewhere three renames (the caller holds signals back)."""
    if _exchange(new, old):
        return
    aside = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=old.parent))
    os.rmdir(aside)
    os.rename(old, aside)
    os.rename(new, old)
    os.rename(aside, new)


def _exchange(a: Path, b: Path) -> bool:
    """``renameat2(a, b, RENAME_EXCHANGE)``; False where the C library or file system has none."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def text_writer(text: str | Iterable[str]):
    """A writer (callable(path)) for ``text``: a string, or an iterable of chunks written as they
    come (``timeline_csv``, ``trace_json``), so a large file is never one string in memory. A path
    ending in ``.gz`` is gzip-compressed (level 1: about as small as level 6 on these repetitive
    rows, several times faster)."""
    def write(path: Path) -> None:
        chunks = [text] if isinstance(text, str) else text
        if Path(path).suffix == ".gz":
            # mtime=0: the same results give the same bytes
            with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                        compresslevel=1, mtime=0) as gz:
                for chunk in chunks:
                    gz.write(chunk.encode("utf-8"))
        else:
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.writelines(chunks)
    return write


def compressed(name: str, gzip_outputs: bool) -> str:
    """The file name ``name`` gets: ``name + ".gz"`` when the outputs are to be compressed (for a
    ``--gzip`` flag: ``writers[compressed("timeline.csv", args.gzip)] = text_writer(...)``)."""
    return name + ".gz" if gzip_outputs else name


_SLICE_KINDS = ("F", "B", "B (input grad)", "W")


def trace_json(result) -> Iterator[str]:
    """Chrome / Perfetto trace (open in ui.perfetto.dev), as text chunks for ``text_writer``.

    One process per rank (pid = rank): thread 0 holds one slice per op (an FB op is one slice
    naming both halves), and counter ``memory`` holds one series per category (fragmentation
    included, so the series add up to ``timeline.csv``'s ``rank_total_bytes``), in bytes.
    A p2p transfer is a flow from its producer's slice to its consumer's. Times are integer
    microseconds: start and end are each rounded (not the duration, whose rounding could carry
    an end past the next start), and an end is clamped to the next slice's start on its track,
    so no two slices overlap (Perfetto would nest or drop them). A counter sample at
    microsecond ``ts`` is the level after the last record that rounds to ``ts``; a series is
    sampled only where it changes.
    """
    sp = result.spans
    sch = result.workload.schedule
    dirs = sch.num_directions > 1
    yield '{"displayTimeUnit": "ms", "traceEvents": [\n'
    yield '{"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "rank 0"}}'
    start_us = np.rint(sp.start * 1e6).astype(np.int64)
    end_us = np.rint(sp.end * 1e6).astype(np.int64)
    # one slice per op: the atoms of a rank's op (two for FB) share (rank, op_index)
    key = sp.rank.astype(np.int64) * (int(sp.op_index.max(initial=0)) + 1) + sp.op_index
    first = np.nonzero(np.append(True, key[1:] != key[:-1]))[0] if len(key) else np.zeros(0, np.int64)
    op_of_atom = np.cumsum(np.append(True, key[1:] != key[:-1])) - 1 if len(key) else first
    op_start = np.minimum.reduceat(start_us, first) if len(first) else first
    op_end = np.maximum.reduceat(end_us, first) if len(first) else first
    op_rank = sp.rank[first]
    nxt = np.append(op_start[1:], np.iinfo(np.int64).max)
    same = np.append(op_rank[1:] == op_rank[:-1], False)
    op_end = np.where(same, np.minimum(op_end, nxt), op_end)
    op_end = np.maximum(op_end, op_start)
    label = [f"{_SLICE_KINDS[k]} mb {m} stage {s}" + (f" dir {d}" if dirs else "") for k, m, s, d in
             zip(sp.kind.tolist(), sp.mb.tolist(), sp.stage.tolist(), sp.direction.tolist())]
    names = {}
    for i, o in enumerate(op_of_atom.tolist()):
        names[o] = names[o] + " + " + label[i] if o in names else label[i]
    out = []
    for o, (a, r, t0, t1) in enumerate(zip(first.tolist(), op_rank.tolist(), op_start.tolist(), op_end.tolist())):
        op = sch.ranks[r][int(sp.op_index[a])]
        out.append(f',\n{{"ph": "X", "name": "{names[o]}", "pid": {r}, "tid": 0, "ts": {t0}, "dur": {t1 - t0}, '
                   f'"args": {{"op": {json.dumps(str(op))}, "stage": {sp.stage[a]}, "chunk": {sp.chunk[a]}, '
                   f'"direction": {sp.direction[a]}, "microbatch": {sp.mb[a]}}}}}')
    yield "".join(out)
    # flows: a p2p transfer leaves at the producer's end (inside its slice) and binds to the
    # consumer's slice ("bp": "e": the slice enclosing the flow's end point)
    out = []
    for a in np.nonzero(sp.consumer >= 0)[0].tolist():
        c = int(sp.consumer[a])
        pa, pc = op_of_atom[a], op_of_atom[c]
        leave = max(int(op_start[pa]), int(op_end[pa]) - 1)
        out.append(f',\n{{"ph": "s", "name": "p2p", "cat": "p2p", "id": {a}, "pid": {sp.rank[a]}, "tid": 0, '
                   f'"ts": {leave}, "args": {{"arrival_us": {round(float(sp.arrival[a]) * 1e6, 3)}}}}}'
                   f',\n{{"ph": "f", "bp": "e", "name": "p2p", "cat": "p2p", "id": {a}, "pid": {sp.rank[c]}, '
                   f'"tid": 0, "ts": {int(op_start[pc])}}}')
    yield "".join(out)
    series = list(CATEGORIES) + ["fragmentation"]
    for r in range(result.ranks):
        out = [f',\n{{"ph": "M", "name": "process_name", "pid": {r}, "args": {{"name": "rank {r}"}}}}' * (r > 0),
               f',\n{{"ph": "M", "name": "thread_name", "pid": {r}, "tid": 0, "args": {{"name": "ops"}}}}']
        times, levels = result.timeline(r)
        if len(times):
            ts = np.rint(times * 1e6).astype(np.int64)
            last = np.append(ts[1:] != ts[:-1], True)
            ts, levels = ts[last], levels[last]
            changed = np.vstack([np.ones((1, levels.shape[1]), bool), levels[1:] != levels[:-1]])
            for t, row, ch in zip(ts.tolist(), levels.tolist(), changed.tolist()):
                args = ", ".join(f'"{series[c]}": {row[c]}' for c in range(len(series)) if ch[c])
                if args:
                    out.append(f',\n{{"ph": "C", "name": "memory", "pid": {r}, "ts": {t}, "args": {{{args}}}}}')
        yield "".join(out)
    yield "\n]}\n"
