"""DVC stage compare: Table 2 (Markdown + JSON metric), mean MoRF curves and figures over every method
and seed of params.yaml."""

import json

import mlflow
import numpy as np

from impactx import ImpactXError, compare, data, figures, layout, tracking
from impactx.cli import run_stage
from impactx.config import load_params
from impactx.evaluation import morf_subset
from impactx.io import atomic_write, save_json

TABLE_JSON, TABLE_MD = "metrics/comparison.json", "metrics/comparison.md"


def main():
    params = load_params()
    runs = [(m, s) for m in ("baseline", *params.methods) for s in params.seeds]
    missing = [str(layout.result(m, s)) for m, s in runs if not layout.result(m, s).exists()]
    if missing:
        raise ImpactXError(f"no results for {', '.join(missing)}: run `dvc repro` (it evaluates every method and seed)")
    records = [json.loads(layout.result(m, s).read_text()) for m, s in runs]
    summary = compare.summarize(records)
    title = f"{params.data.source}, {params.model.backbone}: {len(params.seeds)} seed(s)"
    table = compare.markdown(summary, title)
    save_json(TABLE_JSON, summary)
    atomic_write(TABLE_MD, lambda t: t.write_text(table))
    rows = compare.morf_rows(records)
    save_json("plots/morf.json", rows)

    ds, info = data.load(layout.PREPARED)
    idx, x = morf_subset(ds, params)
    seed, n = params.seeds[0], min(params.evaluate.figure_images, len(idx))
    maps = {compare.LABEL[m]: np.load(layout.result_maps(m, seed))["maps"][:n].astype(np.float32) for m in summary}
    titles = [f"{info['classes'][ds.test.y[i]]}" for i in idx[:n]]
    figures.explanation_grid(x[:n].numpy(), maps, titles, "figures/explanations.png")
    curves = {compare.LABEL.get(k, k): np.array([r[k] for r in rows]) for k in rows[0] if k != "fraction"}
    aopcs = {compare.LABEL[m]: s["aopc"]["mean"] for m, s in summary.items()}
    aopcs["random"] = float(np.mean([r["aopc_random"] for r in records]))
    figures.morf_plot(np.array([r["fraction"] for r in rows]), curves, aopcs, "figures/morf.png")

    with tracking.stage_run("compare", params):
        mlflow.log_metrics({f"{m}.{k}_mean": s[k]["mean"] for m, s in summary.items() for k in compare.STATS})
        for path in (TABLE_MD, TABLE_JSON, "figures/morf.png", "figures/explanations.png"):
            mlflow.log_artifact(path)
    print(table)
    print(f"  table: {TABLE_MD} {TABLE_JSON} (dvc metrics show)   MoRF: plots/morf.json (dvc plots show)")
    print("  figures: figures/explanations.png figures/morf.png")
    print(f"  MLflow UI: mlflow ui --backend-store-uri {params.mlflow.tracking_uri}  (http://127.0.0.1:5000)")


if __name__ == "__main__":
    run_stage(main)
