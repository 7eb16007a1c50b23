"""One pipeline rank: its process joins a gloo group, builds its stages of each schedule, runs
one warm-up step and one measured step, and writes what it recorded as JSON.

The warm-up step lets torch set up its p2p buffers and gives every parameter its ``.grad``, so
the measured step accumulates gradients in place as a training step does. The measured step
runs inside ``SavedBytes.hooks`` with the ``Recorder`` on and, when asked, inside
``torch.profiler`` (``profile_memory=True`` with shapes and stacks, which the memory timeline
needs), whose ``export_memory_timeline(..., device="cpu")`` JSON is written beside.

    torch.multiprocessing.spawn(run_rank, args=(pp, port, names, out_dir, timelines), nprocs=pp)
"""
from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

_HERE = Path(__file__).resolve().parent
for p in (_HERE.parent, _HERE.parents[1]):        # fidelity.* and pipesim importable when spawned
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from fidelity.pipeline_record import Recorder, SavedBytes  # noqa: E402
from fidelity.pipeline_stages import build_stages, example_args, family, scenario  # noqa: E402

__all__ = ["batch", "result_path", "run_rank", "timeline_path", "torch_order"]

DTYPE = torch.bfloat16
COMPUTE = ("F", "B", "I", "W")
STEP_MARK = "fidelity.pipeline_step"      # record_function around the measured step


def result_path(out_dir, name: str, rank: int) -> Path:
    return Path(out_dir) / f"{name}.rank{rank}.json"


def timeline_path(out_dir, name: str, rank: int) -> Path:
    return Path(out_dir) / f"{name}.rank{rank}.memory.json"


def batch(sc, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and targets of the whole step, [M·b, s] int64, the same on every rank."""
    g = torch.Generator().manual_seed(seed)
    shape = (sc.microbatches * sc.training.micro_batch_size, sc.training.seq_len)
    return (torch.randint(0, sc.model.vocab, shape, generator=g),
            torch.randint(0, sc.model.vocab, shape, generator=g))


def torch_order(actions) -> list[str]:
    """Compute actions of one rank of a torch ``pipeline_order`` as tokens: ``3F0``, ``7I2``,
    an overlapped pair as ``[0F7&7B3]``; idle steps and REDUCE_GRAD dropped."""
    out = []
    for a in actions:
        if a is None:
            continue
        kind = a.computation_type.value
        if a.sub_actions is not None:
            out.append("[" + "&".join(f"{s.stage_index}{s.computation_type.value}{s.microbatch_index}"
                                      for s in a.sub_actions) + "]")
        elif kind in COMPUTE:
            out.append(f"{a.stage_index}{kind}{a.microbatch_index}")
    return out


def _no_loss(output, target):
    raise RuntimeError("loss_fn called on a rank without the head's stage")


def _run_schedule(name: str, rank: int, pp: int, out_dir: Path, profile: bool) -> None:
    from torch.distributed.pipelining import PipelineStage
    from torch.distributed.pipelining import schedules as torch_schedules
    from pipesim.placement import stage_plans

    fam = family(name)
    sc = scenario(name, pp=pp)
    sch = sc.build_schedule()
    plans = stage_plans(sc.model, sc.placement, sc.layers_per_stage)
    modules = build_stages(sc, rank, DTYPE)
    params = [t for m in modules for t in list(m.parameters()) + list(m.buffers())]
    ids, targets = batch(sc)
    saved = SavedBytes(exclude=params, view_only=(ids, targets))
    rec = Recorder(saved)

    stages, loss_fn = [], _no_loss
    for c, mod in enumerate(modules):
        s = sch.stage(rank, c)
        x, y = example_args(sc, plans[s], DTYPE)
        st = PipelineStage(mod, s, sch.num_stages, torch.device("cpu"), input_args=x, output_args=y)
        rec.wrap(st)
        stages.append(st)
        if mod.head is not None:
            loss_fn = rec.loss_fn(s, mod.loss)
    cls = getattr(torch_schedules, fam.torch_class)
    schedule = cls(stages[0] if fam.chunks == 1 else stages, n_microbatches=sc.microbatches, loss_fn=loss_fn)

    has_first = any(st.is_first for st in stages)
    has_last = any(st.is_last for st in stages)
    args = (ids,) if has_first else ()
    kwargs = {"target": targets, "losses": []} if has_last else {}

    with saved.hooks():
        torch.manual_seed(0)
        schedule.step(*args, return_outputs=False, **kwargs)      # warm-up
        gc.collect()
        leftover = saved.level
        dist.barrier()
        rec.recording = saved.logging = True
        saved.log.append((_now(), saved.level))
        prof = None
        if profile:
            from torch.profiler import ProfilerActivity
            prof = torch.profiler.profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                                          record_shapes=True, with_stack=True)
            prof.start()
        if has_last:
            kwargs["losses"] = []
        start = _now()
        with torch.profiler.record_function(STEP_MARK):
            torch.manual_seed(1)
            schedule.step(*args, return_outputs=False, **kwargs)
        end = _now()
        if prof is not None:
            prof.stop()
        rec.recording = saved.logging = False
    gc.collect()
    prof_step = None
    if prof is not None:
        mark = [e for e in prof.profiler.kineto_results.events() if e.name() == STEP_MARK]
        prof_step = [mark[0].start_ns(), mark[0].end_ns()] if mark else None
        _export_timeline(prof, timeline_path(out_dir, name, rank))
    order = torch_order(schedule.pipeline_order[rank])
    result = {"schedule": name, "rank": rank, "pp": pp, "microbatches": sc.microbatches,
              "stages": [sch.stage(rank, c) for c in range(len(stages))],
              "torch_class": fam.torch_class, "torch_order": order,
              "actions": rec.as_dicts(), "saved_log": saved.log, "step_ns": [start, end],
              "leftover_before": leftover, "leftover_after": saved.level,
              "timeline": timeline_path(out_dir, name, rank).name if profile else None,
              "profiler_step_ns": prof_step}
    _write_json(result_path(out_dir, name, rank), result)
    dist.barrier()


def _now() -> int:
    return time.perf_counter_ns()


def _export_timeline(prof, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp.json")
    import warnings
    with warnings.catch_warnings():      # deprecated in favour of CUDA snapshots, which CPU lacks
        warnings.simplefilter("ignore", FutureWarning)
        prof.export_memory_timeline(str(tmp), device="cpu")
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def run_rank(rank: int, pp: int, port: int, names: list[str], out_dir: str, timelines: list[str]) -> None:
    """The body of rank ``rank``'s process: every schedule of ``names`` in turn, those in
    ``timelines`` under the profiler."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)                 # pp processes share the machine's cores
    dist.init_process_group("gloo", rank=rank, world_size=pp)
    try:
        for name in names:
            _run_schedule(name, rank, pp, Path(out_dir), name in timelines)
    finally:
        dist.destroy_process_group()
