"""DVC stage compare: Table 2 (Markdown, and numbers as a DVC metric), the MoRF plot data and the figures
over every method and seed of params.yaml."""

import json

import mlflow

from impactx import ImpactXError, attribution, compare, data, figures, layout, methods, tracking
from impactx.io import atomic_write, save_json
from impactx.params import load_params
from impactx.stage import run_stage


def main():
    params = load_params()
    rows = methods.rows(params)
    runs = [(m, s) for m in rows for s in params.seeds]
    missing = [str(layout.result(m, s)) for m, s in runs if not layout.result(m, s).exists()]
    if missing:
        raise ImpactXError(f"no results for {', '.join(missing)}: run `dvc repro` (it evaluates every method and seed)")
    records = [json.loads(layout.result(m, s).read_text()) for m, s in runs]
    summary = compare.summarize(records, rows)
    title = f"{params.data.source}, {params.model.backbone}"
    table = compare.markdown(summary, title, params.seeds, attribution.label(params.attribution))
    save_json(layout.TABLE_JSON, summary)
    save_json(layout.HEADLINE_JSON, compare.headline(summary))
    atomic_write(layout.TABLE_MD, lambda t: t.write_text(table))
    save_json(layout.MORF_PLOT, compare.morf_rows(records, rows))
    figures.comparison_figures(data.load(layout.PREPARED), records, rows, params)

    with tracking.stage_run("compare", params) as run:
        # every number of the table as a metric, named as `dvc metrics show` names it: means and stds
        # (impactx.test_accuracy.mean), paired differences with their 95% intervals over seeds
        # (impactx.test_accuracy_minus_impactx_lambda0.mean, .ci95, .n), faithfulness and fidelity
        numbers = {k: v for k, v in tracking.flatten(summary).items() if isinstance(v, int | float)}
        mlflow.log_metrics({k: float(v) for k, v in numbers.items() if not isinstance(v, bool)})
        for path in (layout.TABLE_MD, layout.TABLE_JSON, layout.HEADLINE_JSON, *layout.FIGURES.values()):
            mlflow.log_artifact(str(path))
        ui = tracking.ui_hint(run)
    print(table)
    print(
        f"  table: {layout.TABLE_MD} {layout.TABLE_JSON}; headline: {layout.HEADLINE_JSON} (dvc metrics show)"
        f"   MoRF: {layout.MORF_PLOT} (dvc plots show)"
    )
    print("  figures: " + " ".join(str(p) for p in layout.FIGURES.values()))
    print(f"  MLflow UI: {ui}  (this run's metrics: search `minus` for the paired differences)")


if __name__ == "__main__":
    run_stage(main)
