"""The fan-out flow against a sequential `dvc repro`, measured in the same run: the default pipeline (the
committed params.yaml: digits, three seeds) in three fresh clones of this repository's HEAD, each with a
cold DVC cache, MLflow store and compile cache, one after the other:

1. `dvc repro` (the baseline: DVC runs one stage at a time);
2. `python flows/pipeline.py --workers 1` (one task per stage, in order; it records every stage's time);
3. `python flows/pipeline.py --workers 2` (two worker slots; on a CPU-only machine the cores split).

It prints each wall time, the ratio of (3) to (1) (the goal: at most 0.7 on a 2-core machine), whether
the three dvc.lock files are identical, and the wall time impactx.schedule predicts from the stage times
of (2) for 1, 2, 4 and 8 workers beside what (2) and (3) measured.

    python benchmarks/workers.py                                            # about 30 minutes here
    python benchmarks/workers.py --out studies/results/benchmark_workers.json  # the docs' page

Run it on a quiet machine (`uptime`): the three runs share its cores with nothing else."""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

from impactx.io import atomic_write
from impactx.layout import STAGE_TIMES
from impactx.schedule import critical_path, fill, load_times, simulate
from impactx.study import head_commit, machine
from impactx.tracking import THREADS_TAG

REPO = Path(__file__).resolve().parents[1]
RUNS = {  # label -> the command, run in its own fresh clone
    "dvc repro": ["dvc", "repro"],
    "flow --workers 1": [sys.executable, "flows/pipeline.py", "--workers", "1"],
    "flow --workers 2": [sys.executable, "flows/pipeline.py", "--workers", "2"],
}
GOAL = 0.7  # flow --workers 2 ÷ dvc repro


def clone(into: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(REPO), str(into)], check=True)
    return into


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """The command's wall seconds and the CPU seconds (user + system) of every process it started."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cpu0, t0 = _children_cpu(), time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if out.returncode:
        sys.exit(f"error: {' '.join(cmd)} failed in {cwd} (exit {out.returncode}): {out.stderr.strip()[-500:]}")
    return seconds, cpu


def _children_cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def stage_threads(root: Path) -> dict[str, int]:
    """torch's thread count -> how many of the clone's MLflow stage runs had it."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=10_000)
    return dict(Counter(r.data.tags[THREADS_TAG] for r in runs if THREADS_TAG in r.data.tags))


def lock(root: Path) -> dict:
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="also write the results JSON (studies/results/...)")
    ap.add_argument("--keep", action="store_true", help="keep the three clones (their paths are printed)")
    args = ap.parse_args()
    host = {**machine(), "load_average_1min_before": round(os.getloadavg()[0], 2)}
    print(json.dumps({"machine": host}), flush=True)
    work = Path(tempfile.mkdtemp(prefix="impactx-workers-"))
    measured, cpu, roots = {}, {}, {}
    for i, (label, cmd) in enumerate(RUNS.items()):
        roots[label] = clone(work / f"run{i}")
        measured[label], cpu[label] = timed(cmd, roots[label])
        print(
            json.dumps({"run": label, "wall_s": round(measured[label], 1), "cpu_s": round(cpu[label], 1)}), flush=True
        )
    base_lock = lock(roots["dvc repro"])
    differing = {label: [s for s in base_lock if lock(r).get(s) != base_lock[s]] for label, r in roots.items()}

    sys.path.insert(0, str(REPO / "flows"))
    from pipeline import dag  # the DAG as the flow reads it

    ups, cacheable = dag(roots["flow --workers 1"])
    rows, summary = [], {}
    for source in ("flow --workers 1", "flow --workers 2"):  # predictions from each run's recorded times
        times = fill(list(ups), load_times(roots[source] / STAGE_TIMES))
        length, path = critical_path(ups, times)
        summary[f"critical_path_s_from_{source.split()[-1]}_worker_times"] = round(length, 1)
        summary[f"critical_path_from_{source.split()[-1]}_worker_times"] = " → ".join(path)
        for w in (1, 2, 4, 8):
            label = f"flow --workers {w}"
            rows.append({"times_from": source, "workers": w, "predicted_s": round(simulate(ups, times, cacheable, w), 1),
                         "measured_s": round(measured[label], 1) if label in measured else None})  # fmt: skip
    base = measured["dvc repro"]
    ratio = measured["flow --workers 2"] / base
    summary.update({
        "dvc_repro_s": round(base, 1), "flow_workers1_s": round(measured["flow --workers 1"], 1),
        "flow_workers2_s": round(measured["flow --workers 2"], 1), "ratio_workers2_vs_dvc_repro": round(ratio, 3),
        "goal": f"<= {GOAL}", "goal_met": ratio <= GOAL, "stages": len(ups),
        # CPU seconds (user + system) of each run's processes; CPU ÷ cores is the least wall time any schedule of
        # that much work can take here, so (dvc repro's CPU ÷ cores) ÷ dvc repro's wall bounds the ratio
        "cpu_s": {label: round(c, 1) for label, c in cpu.items()}, "cores": os.cpu_count(),
        "ratio_bound_at_dvc_repro_cpu": round(cpu["dvc repro"] / os.cpu_count() / base, 3),
        # how many stage runs had each torch thread count (their MLflow tag): a slot splits the threads of the
        # `threads: split` stages only, so training stages keep the sequential run's threads and bytes
        "stage_runs_by_threads": {label: stage_threads(root) for label, root in roots.items()},
        "dvc_lock_identical_to_dvc_repro": {label: not d for label, d in differing.items()},
        "stages_whose_lock_entry_differs": {label: len(d) for label, d in differing.items()},
    })  # fmt: skip
    for r in rows:
        print(json.dumps(r))
    print(json.dumps({"summary": summary}))
    if args.out:
        prov = {"command": "python benchmarks/workers.py " + " ".join(sys.argv[1:]), "commit": head_commit(),
                "commit_is": "the code that ran", "machine": host}  # fmt: skip
        data = {"provenance": prov, "rows": rows, "summary": summary}
        atomic_write(args.out, lambda t: t.write_text(json.dumps(data, indent=1) + "\n"))
    if args.keep:
        print(f"clones kept under {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
