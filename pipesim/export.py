"""Machine-readable outputs, written atomically: ``summary.json``, ``timeline.csv``, ``trace.json``.

The output folder is checked before any work (``check_output``: it can be created and written,
it holds nothing pipesim did not write). Every file of a run is then written into a temporary
folder beside the destination; only when all of them exist does that folder take the
destination's place, in one rename (Linux: an atomic exchange with the old folder), so a failure
or a signal leaves the previous results complete and no temporary folder behind.
"""
from __future__ import annotations

import contextlib
import csv
import ctypes
import errno
import io
import json
import os
import shutil
import signal
import stat
import tempfile
from pathlib import Path

import numpy as np

from pipesim.memory import CATEGORIES


def summary_json(result) -> str:
    """Deterministic JSON text: sorted keys, fixed rounding (see ``Result.summary``)."""
    return json.dumps(result.summary(), indent=2, sort_keys=True) + "\n"


def timeline_csv(result) -> str:
    """One row per ledger record: time, rank, category, delta, the rank's total after it."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["time_ms", "rank", "category", "delta_bytes", "rank_total_bytes"])
    names = CATEGORIES
    for r in range(result.ranks):
        times, tot = result.total(r)
        cats = result.ledger.cat[result.records(r)]
        deltas = result.ledger.delta[result.records(r)]
        for t, c, d, s in zip(times.tolist(), cats.tolist(), deltas.tolist(), tot.tolist()):
            w.writerow([f"{t * 1e3:.6f}", r, names[c], d, s])
    return buf.getvalue()


class OutputError(ValueError):
    """An output folder pipesim cannot write; the message names the path and the problem."""


#: Every file a pipesim verb writes. An existing output folder holding anything else is not
#: replaced (it is someone's folder, not a results folder): the run is refused before it starts.
OUTPUT_NAMES = frozenset({"summary.json", "timeline.csv", "memory.png", "peaks.png", "schedule.png",
                          "trace.json", "compare.csv", "compare.png", "sweep.csv", "sweep.png",
                          "score.json", "score.png"})
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
            for entry in sorted(set(os.listdir(target)) & OUTPUT_NAMES - set(writers)):
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


def text_writer(text: str):
    def write(path: Path) -> None:
        path.write_text(text, encoding="utf-8")
    return write


def trace_json(result) -> str:
    """Chrome / Perfetto trace: one slice per op, one memory counter (GiB) per rank.

    Open in ui.perfetto.dev or chrome://tracing. Times are microseconds; each rank is a thread.
    """
    sp = result.spans
    names = ("F", "B", "B (input grad)", "W")
    events = []
    for i in range(len(sp.start)):
        events.append({"name": f"{names[sp.kind[i]]} mb {int(sp.mb[i])}", "ph": "X", "pid": 0,
                       "tid": int(sp.rank[i]), "ts": round(float(sp.start[i]) * 1e6, 3),
                       "dur": round(float(sp.end[i] - sp.start[i]) * 1e6, 3),
                       "args": {"stage": int(sp.stage[i]), "chunk": int(sp.chunk[i]),
                                "direction": int(sp.direction[i])}})
    for r in range(result.ranks):
        events.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": r, "args": {"name": f"rank {r}"}})
        times, tot = result.total(r)
        # one counter sample per distinct time: the level after the last record at that time
        last = np.append(times[1:] != times[:-1], True)
        for t, v in zip(times[last].tolist(), tot[last].tolist()):
            events.append({"name": f"memory rank {r} (GiB)", "ph": "C", "pid": 0, "ts": round(t * 1e6, 3),
                           "args": {"GiB": round(v / 2 ** 30, 4)}})
    return json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}) + "\n"
