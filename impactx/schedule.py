"""How the pipeline's wall time grows with worker slots, predicted from measured stage times.

The fan-out flow (flows/pipeline.py) records how long each stage took (layout.STAGE_TIMES). From those times
and the DAG, `critical_path` gives the longest chain of stages (no number of workers runs faster than it),
and `simulate` replays the flow's own scheduling: stages in dvc.yaml's order, each as soon as its upstream
stages are done and a slot is free; a stage that writes nothing runs in the checkout and holds up the
scheduling loop while it runs, after the checkout has taken in (restored) the stages the slots ran.
The prediction assumes a stage takes as long in a slot as it took when it was measured: on a CPU-only
machine, where the slots split the cores, it is the wall time the stages would reach with a core each.

    ups = {"fetch_data": [], "baseline@0": ["fetch_data"], ...}     # flows.pipeline.dag()
    times = {"fetch_data": StageTime(3.1, 1.2), ...}
    critical_path(ups, times)          # (seconds, [stage, ...])
    simulate(ups, times, cacheable, workers=2)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

from impactx import ImpactXError
from impactx.io import atomic_write


class StageTime(NamedTuple):
    seconds: float  # the stage's task: checking out its inputs and `dvc repro --single-item` (run or skipped)
    restore: float = 0.0  # its share of the batch that took it into the checkout after a slot ran it (0: ran there)


def sibling(stage: str) -> str:
    """The name a foreach/matrix stage shares with its other items: train@impactx-3 → train@impactx,
    baseline@4 → baseline (what `fill` matches a stage without a measured time on)."""
    return re.sub(r"(@|-)\d+$", "", stage)


def fill(stages: list[str], times: dict[str, StageTime]) -> dict[str, StageTime]:
    """Each stage's time: its own, else that of a measured stage of the same foreach/matrix family (the
    five-seed DAG from a one-seed run). A stage with neither stops with one line."""
    family: dict[str, StageTime] = {}
    for name, t in times.items():
        family.setdefault(sibling(name), t)
    out, missing = {}, []
    for s in stages:
        if s in times:
            out[s] = times[s]
        elif sibling(s) in family:
            out[s] = family[sibling(s)]
        else:
            missing.append(s)
    if missing:
        raise ImpactXError(
            f"no measured time for stage(s) {', '.join(missing)}: run the flow once with these params "
            "(python flows/pipeline.py), which records every stage's time"
        )
    return out


def critical_path(ups: dict[str, list[str]], times: dict[str, StageTime]) -> tuple[float, list[str]]:
    """The longest chain of stages by time (restores included): the wall time with unlimited workers."""
    finish: dict[str, float] = {}
    before: dict[str, str | None] = {}
    for stage in ups:  # dvc.yaml's order is a topological order
        start, prev = 0.0, None
        for u in ups[stage]:
            if finish[u] > start:
                start, prev = finish[u], u
        finish[stage] = start + times[stage].seconds + times[stage].restore
        before[stage] = prev
    end = max(finish, key=finish.__getitem__)
    path: list[str] = []
    at: str | None = end
    while at is not None:
        path.append(at)
        at = before[at]
    return finish[end], path[::-1]


def simulate(ups: dict[str, list[str]], times: dict[str, StageTime], cacheable: set[str], workers: int) -> float:
    """The flow's wall time with `workers` slots: one slot runs every stage in the checkout, one after the
    other, nothing restored; more slots schedule as flows.pipeline.fan_out does: the checkout takes the
    slots' stages in one batch before a stage that runs there, and at the end."""
    if workers == 1:
        return sum(times[s].seconds for s in ups)
    now, done, running, free = 0.0, set(), {}, workers  # running: stage -> the time it finishes
    unrestored: list[str] = []
    while True:
        progressed = False
        for stage, upstream in ups.items():
            if stage in done or stage in running or not free or not all(u in done for u in upstream):
                continue
            if stage not in cacheable:  # in the checkout, after the batch restore: the loop waits for both
                now += sum(times[s].restore for s in unrestored) + times[stage].seconds
                unrestored.clear()
                done.add(stage)
                progressed = True
                continue
            running[stage], free = now + times[stage].seconds, free - 1
        if not running:
            if progressed:
                continue
            return now + sum(times[s].restore for s in unrestored)
        stage = min(running, key=running.__getitem__)
        now = max(now, running.pop(stage))
        done.add(stage)
        unrestored.append(stage)
        free += 1


def load_times(path: Path) -> dict[str, StageTime]:
    """The recorded stage times (layout.STAGE_TIMES, or a file given by the user)."""
    if not path.exists():
        raise ImpactXError(f"{path}: no stage times recorded: run the flow once (python flows/pipeline.py)")
    try:
        stages = json.loads(path.read_text())["stages"]
        return {s: StageTime(float(v["seconds"]), float(v.get("restore", 0.0))) for s, v in stages.items()}
    except (ValueError, KeyError, TypeError) as e:
        raise ImpactXError(f"{path}: not a stage-times file ({e}): delete it and run the flow again") from None


def record_times(path: Path, measured: dict[str, dict]) -> None:
    """Merge this run's times of the stages that ran into `path`: a skipped stage keeps the time it took
    when it last ran (a cached stage's seconds say nothing about its cost)."""
    old = json.loads(path.read_text())["stages"] if path.exists() else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"stages": {**old, **measured}}, indent=1, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(body))


def table(ups: dict[str, list[str]], times: dict[str, StageTime], cacheable: set[str], workers=(1, 2, 4, 8)) -> str:
    """The critical path and the predicted wall time per number of workers, as printed by the flow."""
    length, path = critical_path(ups, times)
    lines = [
        f"{len(ups)} stages, {sum(t.seconds for t in times.values()):.0f} s of stage time",
        f"critical path {length:.0f} s: {' → '.join(path)}",
        "workers  predicted wall time",
    ]
    lines += [f"{w:>7}  {simulate(ups, times, cacheable, w):.0f} s" for w in workers]
    return "\n".join(lines)
