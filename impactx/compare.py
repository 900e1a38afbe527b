"""The paper's Table 2 for one dataset and backbone: per method, mean ± std over seeds of test and
validation accuracy, and AOPC of the method's own explanation maps next to random maps (the floor)."""

from __future__ import annotations

import numpy as np

ORDER = ("baseline", "impactx", "impactx_lambda0", "abn", "wae")
LABEL = {
    "baseline": "Baseline A",
    "impactx": "IMPACTX",
    "impactx_lambda0": "IMPACTX, λ = 0 (control)",
    "abn": "ABN",
    "wae": "WAE",
}
STATS = ("test_accuracy", "val_accuracy", "aopc", "aopc_random")


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (ddof 1); std is null for a single seed."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None}


def summarize(records: list[dict]) -> dict:
    """{method: {"seeds", "map", test_accuracy/val_accuracy/aopc/aopc_random: {"mean", "std"}}}, in ORDER."""
    by_method: dict[str, list[dict]] = {}
    for r in records:
        by_method.setdefault(r["method"], []).append(r)
    out = {}
    for method in sorted(by_method, key=ORDER.index):
        rs = sorted(by_method[method], key=lambda r: r["seed"])
        out[method] = {"seeds": [r["seed"] for r in rs], "map": rs[0]["map"]}
        out[method].update({k: mean_std([r[k] for r in rs]) for k in STATS})
    return out


def _cell(stat: dict, digits: int = 4) -> str:
    if stat["std"] is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown(summary: dict, title: str) -> str:
    seeds = sorted({s for m in summary.values() for s in m["seeds"]})
    lines = [
        f"## {title}",
        "",
        f"Mean ± sample std over seeds {seeds}. Test accuracy is reported only; models and params are picked"
        " on validation accuracy. AOPC: MoRF of each method's own map (higher = more faithful); random maps"
        " on the same model are the floor.",
        "",
        "| method | test accuracy | val accuracy | AOPC (own map) | AOPC (random map) | map |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method, s in summary.items():
        cells = [LABEL[method]] + [_cell(s[k]) for k in STATS] + [s["map"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def morf_rows(records: list[dict]) -> list[dict]:
    """Mean MoRF curve per method over seeds, plus random maps over every run: the DVC plots format."""
    fractions = records[0]["morf_fractions"]
    curves: dict[str, list] = {}
    for r in records:
        curves.setdefault(r["method"], []).append(r["morf_curve"])
        curves.setdefault("random", []).append(r["random_curve"])
    mean = {k: np.mean(v, axis=0) for k, v in curves.items()}
    return [{"fraction": f, **{k: float(c[i]) for k, c in mean.items()}} for i, f in enumerate(fractions)]
