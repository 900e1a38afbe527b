"""The paper's Table 2 for one dataset and backbone: per method, mean ± std over seeds of test and
validation accuracy, and AOPC of the method's own explanation maps next to random maps (the floor)."""

from __future__ import annotations

import numpy as np

from impactx import methods

STATS = ("test_accuracy", "val_accuracy", "aopc", "aopc_random")
RANDOM = "random maps"  # the MoRF plot's floor: random maps on the same models


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (ddof 1); std is null for a single seed."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None}


def summarize(records: list[dict], order: list[str]) -> dict:
    """{method: {test_accuracy/val_accuracy/aopc/aopc_random: {"mean", "std"}, "seeds": n}}, in `order`:
    numbers only (the DVC metric). Labels and map kinds are in the Markdown table."""
    by_method: dict[str, list[dict]] = {}
    for r in records:
        by_method.setdefault(r["method"], []).append(r)
    out = {}
    for method in [m for m in order if m in by_method]:
        rs = by_method[method]
        out[method] = {k: mean_std([r[k] for r in rs]) for k in STATS} | {"seeds": len(rs)}
    return out


def _cell(stat: dict, digits: int = 4) -> str:
    if stat["std"] is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown(summary: dict, title: str, seeds: list[int]) -> str:
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
    for name, s in summary.items():
        m = methods.get(name)
        lines.append("| " + " | ".join([m.label] + [_cell(s[k]) for k in STATS] + [m.map_kind]) + " |")
    return "\n".join(lines) + "\n"


def morf_rows(records: list[dict], order: list[str]) -> list[dict]:
    """Mean MoRF curve per method over seeds, and of random maps over every run, in DVC's long format:
    one row per (method, fraction), so the plot has one colour per method whatever methods ran."""
    curves: dict[str, list] = {}
    for r in sorted(records, key=lambda r: order.index(r["method"])):
        curves.setdefault(methods.get(r["method"]).label, []).append(r["morf_curve"])
    curves[RANDOM] = [r["random_curve"] for r in records]
    fractions = records[0]["morf_fractions"]
    return [
        {"method": name, "fraction": f, "probability": float(p)}
        for name, c in curves.items()
        for f, p in zip(fractions, np.mean(c, axis=0))
    ]
