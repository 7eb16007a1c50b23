"""Scenario files: one TOML file → one validated, frozen ``Scenario``.

The file is parsed once, here, at the edge; every component receives only its own table as a
frozen dataclass (model, parallel, training → ``pipesim.model``; schedule, placement, hardware,
overheads, timing → this module). Unknown keys, wrong types and impossible layouts are all
reported as one ``ScenarioError`` naming the file, the key path and what is allowed; the CLI
prints it and exits with status 2.

Overrides change the file's values before validation, so a bad override is refused exactly as
the same value written in the file would be. Keys are dotted paths into the TOML tables:

    sc = load_scenario("scenarios/v3_pp16.toml")
    sc = load_scenario("scenarios/tiny.toml", {"training.microbatches": 16, "schedule.name": "gpipe"})
"""
from __future__ import annotations

import copy
import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import schedules
from pipesim.model import (DTypes, ModelConfig, ModelError, ParallelConfig, TrainingConfig,
                           load_preset, preset_names)


class ScenarioError(ValueError):
    """A scenario file that cannot run; the message names the file, the key and what is allowed."""


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

    memory_gib: float = 80.0          # device memory, GiB (2**30 bytes)
    peak_tflops: float = 989.0        # dense BF16 peak, TFLOP/s (H800/H100 SXM)
    efficiency: float = 0.4           # achieved fraction of peak (model FLOPs utilisation)
    p2p_bandwidth_gbps: float = 50.0  # point-to-point bandwidth between pipeline ranks, GB/s (1e9)
    p2p_latency_us: float = 10.0      # per-message latency, microseconds


@dataclass(frozen=True)
class OverheadsConfig:
    """[overheads]: what the allocator and communication libraries add (paper, section 6)."""

    fragmentation: float = 0.0        # fraction of the allocated total, added on top (paper: 0.05-0.30)
    comm_buffer_gib: float = 0.0      # static communication buffers per device (paper: 0.8-2 GiB)
    allocator_rounding: int = 512     # every allocation rounds up to a multiple of this (bytes)


@dataclass(frozen=True)
class TimingConfig:
    """[timing]: explicit per-op times (ms) that override the FLOP-derived durations.

    Each is a single number (every stage) or a list with one entry per stage. ``fb_ms`` is an
    overlapped forward+backward pair; by default its duration is F + B (no overlap speed-up).
    """

    forward_ms: float | tuple[float, ...] | None = None
    backward_ms: float | tuple[float, ...] | None = None   # full backward (input + weight grads)
    weight_ms: float | tuple[float, ...] | None = None     # the weight-gradient part of backward
    fb_ms: float | tuple[float, ...] | None = None


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
            except ScenarioError:
                pass
        raise ScenarioError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list):
            raise ScenarioError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise ScenarioError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


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
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such scenario file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    try:
        return _build(apply_overrides(raw, overrides or {}), path)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None


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
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name or "/" in name:
        raise ScenarioError(f"name: expected a non-empty string without '/', got {name!r}")

    model = _model(dict(raw.get("model", {})))
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

    sched = ScheduleConfig(**_table(ScheduleConfig, raw.get("schedule", {}), "schedule"))
    placement = PlacementConfig(**_table(PlacementConfig, raw.get("placement", {}), "placement"))
    hardware = HardwareConfig(**_table(HardwareConfig, raw.get("hardware", {}), "hardware"))
    overheads = OverheadsConfig(**_table(OverheadsConfig, raw.get("overheads", {}), "overheads"))
    timing = TimingConfig(**_table(TimingConfig, raw.get("timing", {}), "timing"))

    for section, obj in (("parallel", parallel), ("training", training)):
        try:
            obj.validate(model)
        except ModelError as exc:
            raise ScenarioError(f"{section}: {exc}") from None
    try:
        training.validate_layout(parallel)
    except ModelError as exc:
        raise ScenarioError(f"training: {exc}") from None
    _check_positive(hardware, "hardware", ("memory_gib", "peak_tflops", "efficiency", "p2p_bandwidth_gbps"))
    if hardware.efficiency > 1:
        raise ScenarioError(f"hardware.efficiency: a fraction of peak in (0, 1], got {hardware.efficiency}")
    if hardware.p2p_latency_us < 0:
        raise ScenarioError(f"hardware.p2p_latency_us: must be >= 0, got {hardware.p2p_latency_us}")
    if not 0 <= overheads.fragmentation < 1:
        raise ScenarioError(f"overheads.fragmentation: a fraction in [0, 1), got {overheads.fragmentation}")
    if overheads.comm_buffer_gib < 0 or overheads.allocator_rounding < 1:
        raise ScenarioError("overheads: comm_buffer_gib must be >= 0 and allocator_rounding >= 1")

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
    return Scenario(name=name, path=str(path), model=model, parallel=parallel, training=training,
                    microbatches=microbatches, schedule=sched, placement=placement,
                    hardware=hardware, overheads=overheads, timing=timing,
                    layers_per_stage=layers)


# the scenario key behind each argument of schedules.build that a ScheduleError can blame
_SCHEDULE_KEY = {"name": "schedule.name", "chunks": "schedule.chunks", "pp": "parallel.pp",
                 "microbatches": "training.microbatches"}


def _model(raw: dict) -> ModelConfig:
    preset = raw.pop("preset", None)
    overrides = _table(ModelConfig, raw, "model", extra=("preset",))
    if preset is not None:
        if preset not in preset_names():
            raise ScenarioError(f"model.preset: unknown preset {preset!r}; allowed: {', '.join(preset_names())}")
        return dataclasses.replace(load_preset(preset), **overrides)
    try:
        return ModelConfig(**overrides)
    except TypeError as exc:
        raise ScenarioError(f"model: give a preset ({', '.join(preset_names())}) or every dimension: {exc}") from None


def _check_positive(obj, section: str, names: tuple[str, ...]) -> None:
    for n in names:
        if getattr(obj, n) <= 0:
            raise ScenarioError(f"{section}.{n}: must be > 0, got {getattr(obj, n)}")


def _check_timing(timing: TimingConfig, stages: int) -> None:
    for f in dataclasses.fields(timing):
        v = getattr(timing, f.name)
        if isinstance(v, tuple) and len(v) != stages:
            raise ScenarioError(f"timing.{f.name}: a number or a list of {stages} numbers (one per stage), got {len(v)}")
        for x in (v if isinstance(v, tuple) else (v,) if v is not None else ()):
            if x < 0:
                raise ScenarioError(f"timing.{f.name}: times must be >= 0, got {x}")
