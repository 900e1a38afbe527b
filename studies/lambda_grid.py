"""The Table 1 grid for λ: one DVC experiment per (seed, λ) on a base recipe's data, running stage 1, its
SHAP maps and IMPACTX's stage 2 only (the `train` stages; no evaluate stage, so the test split is never
read), and λ chosen on the mean validation accuracy over seeds.

Resumable across machines and sessions: every finished cell is written to --out at once, and a cell
already there is skipped. Cells run seed by seed, so stage 1 and the maps of a seed are computed once
(DVC's cache restores them for its other λ).

    python studies/lambda_grid.py --base cifar10_official_recipe --seeds 0 1 \\
        --lambdas 0.2 0.4 0.6 0.8 1.0 1.2 1.4 --out studies/results/cifar10_official_lambda_grid.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))  # the project's impactx, like the stages

from impactx import layout, methods, study  # noqa: E402
from impactx.io import save_json  # noqa: E402

METRIC = "best_val_accuracy"  # what chooses λ: IMPACTX's validation accuracy at its best epoch


def summary(rows: list[dict], seeds: list[int], lambdas: list[float]) -> dict:
    """Per λ: the mean validation accuracy over the seeds that ran, and its paired difference with stage 1
    (A, the baseline) on the same seeds; the choice, once every cell has run."""
    per = {}
    for lam in lambdas:
        cells = [r for r in rows if r["lambda"] == lam]
        if cells:
            per[str(lam)] = {
                "seeds": len(cells),
                "val_accuracy": statistics.fmean(r[METRIC] for r in cells),
                "val_minus_baseline": statistics.fmean(r[METRIC] - r["baseline_val_accuracy"] for r in cells),
            }
    complete = all(per.get(str(lam), {}).get("seeds") == len(seeds) for lam in lambdas)
    best = max(per, key=lambda k: per[k]["val_accuracy"]) if complete else None  # a tie: the first (smallest) λ
    means = [v["val_accuracy"] for v in per.values()]
    return {"per_lambda": per, "complete": complete, "chosen_lambda": float(best) if best else None,
            "chosen_by": f"mean {METRIC} over seeds (validation split); a tie goes to the smaller λ",
            "spread_over_lambdas": max(means) - min(means) if means else None}  # fmt: skip


def write(out: Path, rows: list[dict], base: dict, command: str, seeds: list[int], lambdas: list[float]) -> None:
    commits = sorted({r["commit"] for r in rows if r.get("commit")})
    provenance = {"recipe": f"studies/recipes/{out.stem}.yaml", "command": command, "commit": ", ".join(commits),
                  "commit_is": "the code that ran each cell (the rows' commit)", "machine": study.machine(),
                  "params": {**base, "methods": ["impactx"], "controls": []}}  # fmt: skip
    save_json(out, {"provenance": provenance, "rows": rows, **summary(rows, seeds, lambdas)})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the recipe whose `set` gives the data and training recipe")
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--lambdas", type=float, nargs="+", required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    base = study.load(args.base)["set"]
    name = args.out.stem
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    rows: list[dict] = data.get("rows", [])
    command = "python studies/lambda_grid.py " + " ".join(sys.argv[1:] if argv is None else argv)
    for seed in args.seeds:
        for lam in args.lambdas:
            if any(r["seed"] == seed and r["lambda"] == lam for r in rows):
                continue
            sets = {**base, "seeds": [seed], "methods": ["impactx"], "controls": [], "impactx.lambda": lam}
            cmd = ["dvc", "exp", "run", "-n", f"{name}-s{seed}-l{lam}"]
            for key, v in sets.items():
                cmd += ["-S", f"{key}={study._value(v)}"]
            print(f"[{time.strftime('%H:%M:%S')}] seed {seed}, λ = {lam}: {' '.join(cmd)} train", flush=True)
            t0 = time.perf_counter()
            subprocess.run([*cmd, "train"], check=True)
            trained = methods.training_of(layout.model("impactx", seed))
            baseline = methods.training_of(layout.model("baseline", seed))
            rows.append({"seed": seed, "lambda": lam, METRIC: trained[METRIC], "best_epoch": trained["best_epoch"],
                         "epochs_run": trained["epochs_run"], "baseline_val_accuracy": baseline[METRIC],
                         "commit": study.head_commit(), "wall_s": round(time.perf_counter() - t0, 1)})  # fmt: skip
            write(args.out, rows, base, command, args.seeds, args.lambdas)
            print(f"  {METRIC} {trained[METRIC]:.4f} (stage 1: {baseline[METRIC]:.4f}) -> {args.out}", flush=True)
    if rows:  # the summary of what ran (also after a run that had nothing left to do)
        write(args.out, rows, base, command, args.seeds, args.lambdas)


if __name__ == "__main__":
    main()
