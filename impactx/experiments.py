"""Pick the best DVC experiment of a grid by a validation metric, and apply it: the last step of the
Table 1 grid search (docs/guide/pipeline.md). The test split never chooses: a metric that is not a validation one is
refused."""

from __future__ import annotations

from impactx import ImpactXError


def best_experiment(rows: list[dict], metric: str) -> dict:
    """The experiment row (dvc.api.exp_show's) with the highest `metric`, a `val_` metric of
    metrics/headline.json such as impactx.val_accuracy.mean."""
    if "val_" not in metric:
        raise ImpactXError(f"'{metric}' is not a validation metric: pick on val_* (e.g. impactx.val_accuracy.mean)")
    runs = [r for r in rows if r.get("Experiment") and r.get(metric) is not None]
    if not runs:
        names = sorted(k for r in rows for k in r if "val_" in k)[:6]
        raise ImpactXError(f"no experiment has '{metric}': run the grid first, or use one of {names}")
    return max(runs, key=lambda r: r[metric])


def main(argv: list[str] | None = None) -> None:
    import argparse

    import dvc.api

    ap = argparse.ArgumentParser(prog="python -m impactx.experiments", description=__doc__)
    ap.add_argument("metric", help="a validation metric of metrics/headline.json, e.g. impactx.val_accuracy.mean")
    ap.add_argument("--apply", action="store_true", help="dvc exp apply the best experiment to the workspace")
    args = ap.parse_args(argv)
    best = best_experiment(dvc.api.exp_show(repo="."), args.metric)
    print(f"best by {args.metric}: {best['Experiment']} ({best[args.metric]:.4f})")
    if args.apply:
        from dvc.repo import Repo

        with Repo(".") as repo:
            repo.experiments.apply(best["Experiment"])
        print(f"applied {best['Experiment']}: params.yaml and the outputs are the experiment's; `dvc repro` to go on")


if __name__ == "__main__":
    from impactx.stage import run_stage

    run_stage(main)
