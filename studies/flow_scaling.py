"""The fan-out flow's wall time for 1, 2, 4 and 8 workers, predicted (impactx.schedule) from the stage times
of a run, for that run's DAG and for the same pipeline over more seeds.

    python studies/flow_scaling.py --times .dvc/tmp/impactx-stage-times.json --seeds 0,1,2,3,4 \\
        --out studies/results/cifar10_flow_scaling.json

Run it in the checkout whose params.yaml made the run. A stage the times file marks as skipped (its
outputs were cached, so its seconds say nothing of its cost) takes the duration of its latest finished
MLflow run instead. Over more seeds, a foreach stage's new items take the measured item's time
(impactx.schedule.fill), and the evaluate stages, which loop over every seed in one process
(stages/evaluate.py), take their time × seeds / measured seeds."""

import argparse
import json
import sys
from pathlib import Path

import mlflow

from impactx import study, tracking
from impactx.io import atomic_write
from impactx.params import load_params
from impactx.schedule import StageTime, critical_path, fill, simulate
from impactx.study import head_commit, machine

CODE = Path(__file__).resolve().parents[1]  # this repository: its commit is the code that ran
sys.path.insert(0, str(CODE / "flows"))
from pipeline import apply_overrides, dag, params_restored  # noqa: E402  (the flow's own DAG reading)

LOOPS_OVER_SEEDS = ("evaluate@", "evaluate_control@", "evaluate_baseline@")  # one process, every seed in turn
WORKERS = (1, 2, 4, 8)


def measured_times(path: Path, params) -> tuple[dict[str, StageTime], list[str]]:
    """The file's times, a skipped stage's from its latest finished MLflow run; and the stages so filled."""
    raw = json.loads(path.read_text())["stages"]
    tracking.use_store(params)
    times, from_mlflow = {}, []
    for stage, t in raw.items():
        if t.get("skipped"):
            runs = mlflow.search_runs(
                experiment_names=[params.mlflow.experiment],
                filter_string=f"tags.dvc_stage = '{stage}' and attributes.status = 'FINISHED'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
                output_format="list",
            )
            if runs:
                times[stage] = StageTime((runs[0].info.end_time - runs[0].info.start_time) / 1000)
                from_mlflow.append(stage)
                continue
        times[stage] = StageTime(float(t["seconds"]), float(t.get("restore", 0.0)))
    return times, from_mlflow


def predict(root: Path, times: dict[str, StageTime], seeds: list[int], measured_seeds: int) -> dict:
    with params_restored(root):
        apply_overrides(root, {"seeds": seeds})
        ups, cacheable = dag(root)
    filled = fill(list(ups), times)
    scale = len(seeds) / measured_seeds
    filled = {s: (StageTime(t.seconds * scale, t.restore) if s.startswith(LOOPS_OVER_SEEDS) else t)
              for s, t in filled.items()}  # fmt: skip
    length, path = critical_path(ups, filled)
    rows = [{"seeds": len(seeds), "workers": w, "predicted_s": round(simulate(ups, filled, cacheable, w)),
             "predicted_h": round(simulate(ups, filled, cacheable, w) / 3600, 2)} for w in WORKERS]  # fmt: skip
    return {"rows": rows, "stages": len(ups), "stage_seconds": round(sum(t.seconds for t in filled.values())),
            "critical_path_s": round(length), "critical_path": " → ".join(path)}  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--times", type=Path, required=True, help="a stage-times file (the flow's, or the same format)")
    ap.add_argument("--seeds", required=True, help="the seeds of the DAG to predict, e.g. 0,1,2,3,4")
    ap.add_argument("--out", type=Path, help="write the results JSON (studies/results/...)")
    ap.add_argument("--recipe", help="the study recipe this runs for: its name and params go to the provenance")
    ap.add_argument("--as-run", help="how the times were measured, if not by the flow itself (provenance)")
    args = ap.parse_args()
    root, params = Path("."), load_params()
    times, from_mlflow = measured_times(args.times, params)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = [predict(root, times, list(params.seeds), len(params.seeds)), predict(root, times, seeds, len(params.seeds))]
    prov = {"command": "python studies/flow_scaling.py " + " ".join(sys.argv[1:]), "commit": head_commit(CODE),
            "commit_is": "the code that ran", "machine": machine()}  # fmt: skip
    if args.recipe:
        prov = {
            "recipe": str(study.recipe_path(args.recipe)),
            **prov,
            "params": study.load(args.recipe, CODE).get("set", {}),
        }
    if args.as_run:
        prov["as_run"] = args.as_run
    data = {
        "provenance": prov,
        "measured": {s: round(t.seconds, 1) for s, t in times.items()},
        "measured_from_mlflow_runs": from_mlflow,
        "families_scaled_by_seeds": list(LOOPS_OVER_SEEDS),
        "rows": [r for run in runs for r in run.pop("rows")],
        "summary": {f"{len(params.seeds) if i == 0 else len(seeds)}_seeds": run for i, run in enumerate(runs)},
    }
    print(json.dumps(data, indent=1))
    if args.out:
        atomic_write(args.out, lambda t: t.write_text(json.dumps(data, indent=1) + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
