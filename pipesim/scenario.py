"""Scenario files: one TOML file → one validated, frozen ``Scenario``.

The file is parsed once, here, at the edge; every component receives only its own table as a
frozen dataclass (model, parallel, training → ``pipesim.model``; schedule, placement, hardware,
overheads, timing → this module). Unknown keys, wrong types, numbers out of range (NaN and
infinities included, ``pipesim.limits``), steps too large to simulate and impossible layouts
are all reported as one ``ScenarioError`` naming the file, the key path and what is allowed;
the CLI prints it and exits with status 2. A file that cannot be read (a folder, a symlink
loop, not UTF-8, ...) is one too, naming the path and the problem.

Overrides change the file's values before validation, so a bad override is refused exactly as
the same value written in the file would be. Keys are dotted paths into the TOML tables:

    sc = load_scenario("scenarios/v3_pp16.toml")
    sc = load_scenario("scenarios/tiny.toml", {"training.microbatches": 16, "schedule.name": "gpipe"})
"""
from __future__ import annotations

import copy
import dataclasses
import errno
import os
import stat
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import schedules
from pipesim import limits
from pipesim.model import (DTypes, ModelConfig, ModelError, ParallelConfig, TrainingConfig,
                           load_preset, preset_names)


class ScenarioError(ValueError):
    """A scenario file that cannot run; the message names the file, the key and what is allowed."""


class _NumberError(ScenarioError):
    """A value of the right type that is out of range: reported as it is, even inside a union."""


#: A scenario file is a few kilobytes of TOML; anything larger is refused before it is read.
MAX_FILE_BYTES = 1 << 20
#: ``name`` becomes a folder under results/: at most this many bytes (UTF-8).
MAX_NAME_BYTES = 100


@dataclass(frozen=True)
class ScheduleConfig:
    """[schedule]: which pipeline schedule runs the step."""

    name: str = "1f1b"          # one of schedules.names()
    chunks: int | None = None   # chunks (virtual stages) per rank; None = the family's default


@dataclass(frozen=True)
class PlacementConfig:
    """[placement]: layers → stages, and which stage holds the embedding, head and MTP.

    ``layers_per_stage`` is an explicit list (one entry per model stage, e.g. the paper's
    [4]*15 + [1]) or "auto": an even split, the remainder going one layer each to the middle
    stages so that the embedding's and the head's stages stay light. Stage indices may be
    negative (Python style: -1 is the last stage).
    """

    layers_per_stage: tuple[int, ...] | str = "auto"
    embedding_stage: int = 0
    head_stage: int = -1
    mtp_stage: int = -1


@dataclass(frozen=True)
class HardwareConfig:
    """[hardware]: one device and its links."""

    memory_gib: float = 80.0          # device memory, GiB (2**30 bytes), in (0, 2**20]
    peak_tflops: float = 989.0        # dense BF16 peak, TFLOP/s (H800/H100 SXM), in (0, 1e6]
    efficiency: float = 0.4           # achieved fraction of peak (model FLOPs utilisation), in (0, 1]
    p2p_bandwidth_gbps: float = 50.0  # point-to-point bandwidth between pipeline ranks, GB/s (1e9), in (0, 1e6]
    p2p_latency_us: float = 10.0      # per-message latency, microseconds, in [0, 1e9]
    nvlink_bandwidth_gbps: float = 450.0  # intra-node link per direction, GB/s (H100 NVLink), in (0, 1e6]
    node_size: int = 8                # devices per node (one NVLink domain), in [1, 2**20]
    reserve_gib: float = 1.0          # memory the framework cannot use (CUDA context, NCCL
                                      # buffers; pipesim.hardware), subtracted from memory_gib
    preset: str | None = None         # a named device (pipesim.hardware.PRESETS) filling the rest


@dataclass(frozen=True)
class OverheadsConfig:
    """[overheads]: what the allocator and communication libraries add (paper, section 6)."""

    fragmentation: float = 0.0        # fraction of the allocated total, added on top (paper: 0.05-0.30), in [0, 1)
    comm_buffer_gib: float = 0.0      # static communication buffers per device (paper: 0.8-2 GiB), in [0, 2**20]
    allocator_rounding: int = 512     # every allocation rounds up to a multiple of this (bytes), in [1, 2**30]
    tight_fraction: float = 0.1       # headroom below this fraction of the usable memory is TIGHT


@dataclass(frozen=True)
class TimingConfig:
    """[timing]: explicit per-op times (ms) that override the FLOP-derived durations.

    Each is a single number (every stage) or a list with one entry per stage, in [0, 1e9] ms.
    ``fb_ms`` is an overlapped forward+backward pair; by default the simulator runs its two
    halves' phases on the compute and communication streams (``pipesim.simulator.overlap``):
    F + B less the all-to-all each half hides under the other's compute.
    """

    forward_ms: float | tuple[float, ...] | None = None
    backward_ms: float | tuple[float, ...] | None = None   # full backward (input + weight grads)
    weight_ms: float | tuple[float, ...] | None = None     # the weight-gradient part of backward
    fb_ms: float | tuple[float, ...] | None = None
    a2a_overlap: float = 0.0   # share of a lone op's all-to-all the framework hides behind its
                               # own compute, in [0, 1] (0: serialised, Megatron's default)


@dataclass(frozen=True)
class Scenario:
    """A whole scenario, validated. ``microbatches`` is per step (DualPipe: over both directions)."""

    name: str
    path: str
    model: ModelConfig
    parallel: ParallelConfig
    training: TrainingConfig
    microbatches: int
    schedule: ScheduleConfig
    placement: PlacementConfig
    hardware: HardwareConfig
    overheads: OverheadsConfig
    timing: TimingConfig
    layers_per_stage: tuple[int, ...] = field(default=())  # resolved from placement

    def build_schedule(self) -> schedules.Schedule:
        return schedules.build(self.schedule.name, self.parallel.pp, self.microbatches,
                               self.schedule.chunks)


# --------------------------------------------------------------------------- parsing helpers

def _type_name(tp) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0]).removeprefix('an ').removeprefix('a ')}s"
    return str(tp)


def _coerce(value, tp, where: str):
    """Check ``value`` against the annotation ``tp``; return it in the dataclass's form."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except _NumberError:
                raise
            except ScenarioError:
                pass
        raise ScenarioError(f"{where}: expected {_type_name(tp)}, got {limits.show(value)}")
    if origin is tuple:
        if not isinstance(value, list):
            raise ScenarioError(f"{where}: expected {_type_name(tp)}, got {limits.show(value)}")
        item = typing.get_args(tp)[0]
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise ScenarioError(f"{where}: expected {_type_name(tp)}, got {limits.show(value)}")
    # every number, whatever its field: finite, and an integer 64-bit arithmetic keeps exact
    try:
        limits.check_number(value, where)
    except limits.LimitError as exc:
        raise _NumberError(str(exc)) from None
    return float(value) if tp is float else value


def _table(cls, raw: dict, where: str, skip: tuple[str, ...] = (), extra: tuple[str, ...] = ()):
    """Keyword arguments for dataclass ``cls`` from TOML table ``raw``, rejecting unknown keys
    and wrong types. ``extra`` names keys the caller already took out of ``raw`` (listed as
    allowed in the message)."""
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: expected a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}
    allowed = [n for n in fields if n not in skip]
    kwargs = {}
    for key, value in raw.items():
        if key not in allowed:
            raise ScenarioError(f"{where}.{key}: unknown key; allowed: {', '.join([*allowed, *extra])}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    return kwargs


_SECTIONS = ("name", "model", "parallel", "placement", "training", "schedule", "hardware",
             "overheads", "timing")


def load_scenario(path: str | Path, overrides: dict | None = None) -> Scenario:
    """Read and validate a scenario file; raise ``ScenarioError`` naming file, key and what is allowed.

    ``overrides`` maps dotted keys (``"training.microbatches"``, ``"parallel.pp"``, ``"name"``)
    to values as TOML would give them (``16``, ``"zb-h1"``, ``[4, 4, 1]``); they replace the
    file's values before validation. ``None`` as a value removes the key (its default applies).
    """
    raw = read_toml(path)
    path = Path(path)
    try:
        return _build(apply_overrides(raw, overrides or {}), path)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None


def read_toml(path: str | Path) -> dict:
    """The TOML file ``path`` as a dict, or one ``ScenarioError`` naming the path and the problem
    (missing, a folder, not a regular file, unreadable, a symlink loop, a part of the path that is
    a file, too large, not UTF-8, not TOML)."""
    text = os.fspath(path)
    if not text:
        raise ScenarioError("'': an empty path; give a scenario file, e.g. scenarios/tiny.toml")
    if "\0" in text:
        raise ScenarioError(f"{text!r}: a path cannot contain a NUL character")
    try:
        info = os.stat(text)
        if stat.S_ISDIR(info.st_mode):
            raise ScenarioError(f"{text}: is a folder, not a scenario file")
        if not stat.S_ISREG(info.st_mode):
            raise ScenarioError(f"{text}: not a regular file (a device, pipe or socket); give a TOML file")
        if info.st_size > MAX_FILE_BYTES:
            raise ScenarioError(f"{text}: {info.st_size:,} bytes, larger than a scenario file can be "
                                f"({MAX_FILE_BYTES:,} bytes, pipesim.scenario.MAX_FILE_BYTES)")
        with open(text, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ScenarioError(f"{text}: no such scenario file") from None
    except NotADirectoryError:
        raise ScenarioError(f"{text}: a part of the path is a file, not a folder") from None
    except OSError as exc:
        raise ScenarioError(f"{text}: cannot read: {_os_problem(exc)}") from None
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{text}: not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r}); "
                            f"a scenario file is UTF-8 TOML") from None
    try:
        return tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{text}: not valid TOML: {exc}") from None
    except ValueError as exc:     # an integer of more than 4300 digits
        raise ScenarioError(f"{text}: not a usable TOML value: {exc}") from None


def apply_overrides(raw: dict, overrides: dict) -> dict:
    """A copy of the parsed TOML ``raw`` with each dotted key of ``overrides`` set (or removed,
    for ``None``); missing tables are created. Which keys are allowed is left to validation, so an
    unknown key is refused with the same message as in a file."""
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        parts = str(dotted).split(".")
        if not all(p.strip() == p and p for p in parts):
            raise ScenarioError(f"{dotted!r}: not a key path; expected dotted names such as "
                                f"training.microbatches or hardware.memory_gib")
        table = out
        for i, part in enumerate(parts[:-1]):
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ScenarioError(f"{'.'.join(parts[:i + 1])}: {table!r} is a value, not a table; "
                                    f"cannot set {dotted}")
        if value is None:
            table.pop(parts[-1], None)
        else:
            table[parts[-1]] = _as_toml(value)
    return out


def _as_toml(value):
    """``value`` in the form ``tomllib`` gives (tuples become lists), copied."""
    if isinstance(value, (list, tuple)):
        return [_as_toml(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_toml(v) for k, v in value.items()}
    return value


def _build(raw: dict, path: Path) -> Scenario:
    for key in raw:
        if key not in _SECTIONS:
            raise ScenarioError(f"{key}: unknown section; allowed: {', '.join(_SECTIONS)}")
    name = _check_name(raw.get("name", path.stem))

    model = _model(dict(raw.get("model", {})), path)
    parallel = ParallelConfig(**_table(ParallelConfig, raw.get("parallel", {}), "parallel"))

    traw = dict(raw.get("training", {}))
    microbatches = traw.pop("microbatches", None)
    dtypes_raw = traw.pop("dtypes", {})
    dtypes = DTypes(**_table(DTypes, dtypes_raw, "training.dtypes"))
    tkw = _table(TrainingConfig, traw, "training", skip=("dtypes",), extra=("microbatches", "dtypes"))
    training = TrainingConfig(**tkw, dtypes=dtypes)
    if microbatches is None:
        microbatches = 2 * parallel.pp
    microbatches = _coerce(microbatches, int, "training.microbatches")
    if microbatches < 1:
        raise ScenarioError(f"training.microbatches: must be >= 1, got {microbatches}")
    _limit(limits.check_range, "training.microbatches", microbatches)   # 2 * pp too

    sched = ScheduleConfig(**_table(ScheduleConfig, raw.get("schedule", {}), "schedule"))
    placement = PlacementConfig(**_table(PlacementConfig, raw.get("placement", {}), "placement"))
    hardware = _hardware(_table(HardwareConfig, raw.get("hardware", {}), "hardware"))
    overheads = OverheadsConfig(**_table(OverheadsConfig, raw.get("overheads", {}), "overheads"))
    timing = TimingConfig(**_table(TimingConfig, raw.get("timing", {}), "timing"))

    for section, check in (("parallel", lambda: parallel.validate(model)),
                           ("training", lambda: training.validate(model)),
                           ("training", lambda: training.validate_layout(parallel))):
        try:
            check()
        except ModelError as exc:
            # the model's own messages start with "model."; the others with a key of section
            text = str(exc)
            raise ScenarioError(text if text.startswith("model.") else f"{section}.{text}") from None
    for section, obj in (("hardware", hardware), ("overheads", overheads), ("timing", timing)):
        for f in dataclasses.fields(obj):
            if f"{section}.{f.name}" in limits.RANGES:       # numbers; names are checked on use
                _limit(limits.check_range, f"{section}.{f.name}", getattr(obj, f.name))
    if hardware.reserve_gib >= hardware.memory_gib:
        raise ScenarioError(f"hardware.reserve_gib: must be below memory_gib ({hardware.memory_gib:g}), "
                            f"got {hardware.reserve_gib:g}")

    # the size of the step, estimated before any op is built: refused beyond the limits
    try:
        _, atoms = schedules.size(sched.name, parallel.pp, microbatches, sched.chunks)
        schedules.check_size(sched.name, parallel.pp, microbatches, sched.chunks)
    except schedules.ScheduleError as exc:
        raise ScenarioError(f"{_SCHEDULE_KEY.get(exc.param, 'schedule.name')}: {exc}") from None
    _limit(limits.check_records, model, microbatches, atoms, parallel.pp)
    records = limits.records_estimate(model, microbatches, atoms, parallel.pp)

    try:
        sch = schedules.build(sched.name, parallel.pp, microbatches, sched.chunks)
    except schedules.ScheduleError as exc:
        raise ScenarioError(f"{_SCHEDULE_KEY.get(exc.param, 'schedule.name')}: {exc}") from None

    from pipesim.placement import PlacementError, resolve_layers
    try:
        layers = resolve_layers(model, placement, sch.num_stages)
    except PlacementError as exc:
        raise ScenarioError(f"placement.{exc}") from None
    _check_timing(timing, sch.num_stages)
    _limit(limits.check_bytes, model, parallel, training, overheads, microbatches, records)
    _limit(limits.check_step, model, parallel, training, hardware, timing, atoms)
    return Scenario(name=name, path=str(path), model=model, parallel=parallel, training=training,
                    microbatches=microbatches, schedule=sched, placement=placement,
                    hardware=hardware, overheads=overheads, timing=timing,
                    layers_per_stage=layers)


# the scenario key behind each argument of schedules.build that a ScheduleError can blame
_SCHEDULE_KEY = {"name": "schedule.name", "chunks": "schedule.chunks", "pp": "parallel.pp",
                 "microbatches": "training.microbatches"}


def _hardware(kwargs: dict) -> HardwareConfig:
    """``[hardware]``: a ``preset`` (``pipesim.hardware.PRESETS``) under the keys given beside it."""
    from pipesim.hardware import PRESETS

    name = kwargs.get("preset")
    if name is not None:
        if name not in PRESETS:
            raise ScenarioError(f"hardware.preset: unknown device {name!r}; allowed: {', '.join(PRESETS)}")
        kwargs = {**PRESETS[name], **kwargs}
    return HardwareConfig(**kwargs)


def _model(raw: dict, path: Path) -> ModelConfig:
    """``[model]``: a ``preset``, an ``hf_config`` (a Hugging Face config.json, relative to the
    scenario file; ``pipesim.model.hf_config``) or every dimension; other keys override."""
    preset = raw.pop("preset", None)
    hf = raw.pop("hf_config", None)
    overrides = _table(ModelConfig, raw, "model", extra=("preset", "hf_config"))
    if preset is not None and hf is not None:
        raise ScenarioError("model: give preset or hf_config, not both")
    if hf is not None:
        if not isinstance(hf, str) or not hf:
            raise ScenarioError(f"model.hf_config: expected the path of a config.json, got {hf!r}")
        from pipesim.model.hf_config import read_hf_config
        try:
            return read_hf_config(path.parent / hf, **overrides)
        except ModelError as exc:
            raise ScenarioError(f"model.hf_config: {exc}") from None
    if preset is not None:
        if preset not in preset_names():
            raise ScenarioError(f"model.preset: unknown preset {preset!r}; allowed: {', '.join(preset_names())}")
        return dataclasses.replace(load_preset(preset), **overrides)
    try:
        return ModelConfig(**overrides)
    except TypeError as exc:
        raise ScenarioError(f"model: give a preset ({', '.join(preset_names())}), an hf_config or every "
                            f"dimension: {exc}") from None


def _os_problem(exc: OSError) -> str:
    """An ``OSError`` in words: a symlink loop, permission denied, ..."""
    if exc.errno == errno.ELOOP:
        return "a symlink loop (too many levels of symbolic links)"
    return str(exc.strerror or exc)


def _limit(check, *args) -> None:
    """``check(*args)`` from ``pipesim.limits``, its ``LimitError`` as a ``ScenarioError``."""
    try:
        check(*args)
    except limits.LimitError as exc:
        raise ScenarioError(str(exc)) from None


def _check_name(name) -> str:
    """``name`` if it is usable as one folder under results/, else ``ScenarioError``."""
    allowed = (f"a folder name under results/: not '.' or '..', no leading '.', no '/', '\\' or "
               f"control characters, at most {MAX_NAME_BYTES} bytes")
    if not isinstance(name, str) or not name:
        raise ScenarioError(f"name: expected a non-empty string, {allowed}; got {limits.show(name)}")
    bad = (name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name
           or any(ord(c) < 32 or ord(c) == 127 for c in name) or len(name.encode("utf-8", "replace")) > MAX_NAME_BYTES)
    if bad:
        raise ScenarioError(f"name: {allowed}; got {limits.show(name)}")
    return name


def _check_timing(timing: TimingConfig, stages: int) -> None:
    for f in dataclasses.fields(timing):
        v = getattr(timing, f.name)
        if isinstance(v, tuple) and len(v) != stages:
            raise ScenarioError(f"timing.{f.name}: a number or a list of {stages} numbers (one per stage), got {len(v)}")
        for x in (v if isinstance(v, tuple) else (v,) if v is not None else ()):
            if x < 0:
                raise ScenarioError(f"timing.{f.name}: times must be >= 0, got {x}")
