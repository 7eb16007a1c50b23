"""Which format a measured file is, decided by its content — never by its name alone.

In order: gzip magic (``1f 8b``: the profiler's ``.json.gz`` / ``.raw.json.gz``; the content
inside is detected again), pickle's protocol header (``80 02``..``80 05``: a torch memory
snapshot), JSON whose shape is a profiler timeline (``[times, sizes]``) or its raw events
(``[[t, action, bytes, category], ...]``), a first line that is the CSV header
``time_s,rank,bytes[,category]``, and text holding Megatron ``report_memory`` lines. Anything
else — and a file that starts like one format but breaks it — is a ``ScoreError`` naming the
file and listing the formats expected.
"""
from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

from pipesim.score import csv_timeline, megatron_log, profiler_timeline, snapshot
from pipesim.score.measured import Measured, ScoreError, unrecognised

GZIP_MAGIC = b"\x1f\x8b"


def read(path: str | Path) -> Measured:
    """Read one measured file into a ``Measured``; ``ScoreError`` if it is no known format."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ScoreError(f"{source}: cannot be read ({exc.strerror or exc})") from None
    return parse(data, source)


def parse(data: bytes, source: str, unzipped: bool = False) -> Measured:
    """Detect and parse ``data`` (the bytes of ``source``)."""
    if data.startswith(GZIP_MAGIC) and not unzipped:
        try:
            inner = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise unrecognised(source, f"a gzip file that cannot be decompressed ({exc})") from None
        return parse(inner, source, unzipped=True)
    if data[:2] in snapshot.MAGIC:
        return snapshot.parse(data, source)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise unrecognised(source, "a binary file that is neither a pickle nor gzip") from None
    head = text.lstrip()
    if head.startswith("["):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None          # a log line may start with '[' too: try the text formats below
        if obj is not None:
            if profiler_timeline.is_timeline(obj):
                return profiler_timeline.parse_timeline(obj, source)
            if profiler_timeline.is_raw(obj):
                return profiler_timeline.parse_raw(obj, source)
            raise unrecognised(source, "JSON, but neither a profiler memory timeline [times, sizes] "
                                       "nor its raw events [[time, action, bytes, category], ...]")
    elif head.startswith("{"):
        raise unrecognised(source, "a JSON object; a profiler memory timeline is a JSON list")
    if csv_timeline.header_of(text) is not None:
        return csv_timeline.parse(text, source)
    if megatron_log.looks_like(text):
        return megatron_log.parse(text, source)
    raise unrecognised(source, "not a recognised memory record")
