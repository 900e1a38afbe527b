"""The paper's Table 2 for one dataset and backbone: per method, mean ± std over seeds of test and
validation accuracy, AOPC of the method's own explanation maps next to random maps (the floor), same-model
faithfulness (own map, post-hoc SHAP of the same model, random maps: AOPC and SRG) and fidelity to the
teacher with its floors; and paired differences over seeds, with 95% t-intervals and plain verdicts."""

from __future__ import annotations

import numpy as np

from impactx import methods
from impactx.fidelity import SCORES

STATS = ("test_accuracy", "val_accuracy", "aopc", "aopc_random")
RANDOM = "random maps"  # the MoRF plot's floor: random maps on the same models
# a method's map (a head with a map per class: also its map of the true class) and the floors of its fidelity
FLOORS = ("map", "map_given_class", "class_mean", "class_mean_pred", "random")
FLOOR_LABEL = {
    "class_mean": "the class-mean map of the true class",
    "class_mean_pred": "the class-mean map of the predicted class",
}
GIVEN = "map_given_class"
# the paired Pearson differences: (summary key, the map, its floor, how the verdict names the map)
FLOOR_PAIRS = [
    ("pearson_minus_class_mean", "map", "class_mean", ""),
    ("pearson_minus_class_mean_pred", "map", "class_mean_pred", ""),
    # a per-class head's map of the true class, against the floor that is given the label too
    (f"pearson_{GIVEN}_minus_class_mean", GIVEN, "class_mean", "its map of the true class: "),
]
MAPS = ("own", "shap", "random")  # same-model faithfulness: its own map, SHAP of the same model, random maps
FAITH_SCORES = ("aopc", "aopc_lerf", "srg")


HEADLINE = ("test_accuracy", "val_accuracy", "aopc")  # each row's means in metrics/headline.json


def headline(summary: dict) -> dict:
    """The DVC metric: each row's mean test and validation accuracy and AOPC, and each paired difference
    of test accuracy (mean and 95% interval over seeds), named as in the full table
    (impactx.val_accuracy.mean, impactx.test_accuracy_minus_impactx_lambda0.ci95): a few dozen columns in
    `dvc exp show` and `dvc metrics show`, where the full table made hundreds."""
    out = {}
    for row, s in summary.items():
        out[row] = {k: {"mean": s[k]["mean"]} for k in HEADLINE if k in s}
        out[row] |= {
            k: {"mean": v["mean"], "ci95": v["ci95"]} for k, v in s.items() if k.startswith("test_accuracy_minus_")
        }
    return out


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (ddof 1); std is null for a single seed."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None}


def paired(a: dict[int, float], b: dict[int, float]) -> dict:
    """Mean of the per-seed differences a − b over the seeds both have, with the half-width of its 95%
    t-interval (null below two seeds)."""
    from scipy import stats

    d = np.array([a[s] - b[s] for s in sorted(set(a) & set(b))], dtype=np.float64)
    n = len(d)
    half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n)) if n > 1 else None
    return {"mean": float(d.mean()), "ci95": half, "n": n}


def _per_seed(records: list[dict], method: str, key) -> dict[int, float]:
    return {r["seed"]: key(r) for r in records if r["method"] == method}


def summarize(records: list[dict], order: list[str]) -> dict:
    """Per method, in `order`: mean ± std over seeds of STATS, the training budget (best and last epoch),
    and paired differences over seeds: test accuracy against the baseline and against the method's
    control, and its own map's AOPC against random maps on the same model. Numbers only (the DVC
    metric); labels, map kinds and verdicts are in the Markdown table."""
    by_method: dict[str, list[dict]] = {}
    for r in records:
        by_method.setdefault(r["method"], []).append(r)
    out = {}
    for name in [m for m in order if m in by_method]:
        rs = by_method[name]
        out[name] = {k: mean_std([r[k] for r in rs]) for k in STATS} | {"seeds": len(rs)}
        for k in ("best_epoch", "epochs_run"):
            if all(k in r.get("training", {}) for r in rs):
                out[name][k] = mean_std([r["training"][k] for r in rs])
        acc = _per_seed(records, name, lambda r: r["test_accuracy"])
        for other in _references(name, by_method, order):
            out[name][f"test_accuracy_minus_{other}"] = paired(
                acc, _per_seed(records, other, lambda r: r["test_accuracy"])
            )
        out[name]["aopc_minus_random"] = paired(
            _per_seed(records, name, lambda r: r["aopc"]), _per_seed(records, name, lambda r: r["aopc_random"])
        )
        if all("faithfulness" in r for r in rs):
            out[name]["faithfulness"] = {
                m: {k: mean_std([r["faithfulness"][m][k] for r in rs]) for k in FAITH_SCORES} for m in MAPS
            }
            srg = {m: _per_seed(records, name, lambda r, m=m: r["faithfulness"][m]["srg"]) for m in MAPS}
            out[name]["srg_minus_random"] = paired(srg["own"], srg["random"])
            if not methods.get(name).post_hoc:  # the paper's claim: its own map against SHAP of the same model
                aopc = {m: _per_seed(records, name, lambda r, m=m: r["faithfulness"][m]["aopc"]) for m in MAPS}
                out[name]["aopc_minus_shap"] = paired(aopc["own"], aopc["shap"])
                out[name]["srg_minus_shap"] = paired(srg["own"], srg["shap"])
        if all("fidelity" in r for r in rs):
            floors = [w for w in FLOORS if all(w in r["fidelity"] for r in rs)]
            out[name]["fidelity"] = {
                w: {k: mean_std([r["fidelity"][w][k] for r in rs]) for k in SCORES} for w in floors
            }
            for key, own, floor, _ in FLOOR_PAIRS:
                if own in floors and floor in floors:
                    out[name][key] = paired(
                        _per_seed(records, name, lambda r, m=own: r["fidelity"][m]["pearson"]),
                        _per_seed(records, name, lambda r, f=floor: r["fidelity"][f]["pearson"]),
                    )
    return out


def _references(name: str, present, order: list[str]) -> list[str]:
    """What a method's accuracy is paired against: the baseline and the controls of it that ran; the method
    under test (the table's first stage-2 method, the first of params.yaml's `methods`) also against every
    other compared method that ran (ABN, WAE)."""
    if methods.get(name).stage == 1:
        return []
    compared = [m for m in order if m in present and methods.get(m).stage == 2 and not methods.get(m).control_of]
    controls = [c for c in present if methods.get(c).control_of == name]
    others = [m for m in compared if m != name] if compared[:1] == [name] else []
    return [m for m in ["baseline", *controls, *others] if m in present]


def _verdict(p: dict, scale: float, unit: str, higher: str, lower: str) -> str:
    mean = p["mean"] * scale
    if p["ci95"] is None:
        return f"{mean:+.{2 if scale == 1 else 1}f}{unit} (1 seed): no interval"
    half = p["ci95"] * scale
    word = higher if mean - half > 0 else lower if mean + half < 0 else "not distinguishable"
    digits = 3 if scale == 1 else 1
    return f"{mean:+.{digits}f} ± {half:.{digits}f}{unit} ({p['n']} seeds): {word}"


def verdicts(summary: dict, teacher: str = "SHAP of A") -> list[str]:
    """One plain sentence per claim: paired differences over seeds with their 95% intervals. `teacher`
    names what the fidelity scores compare with (attribution.teacher_label)."""
    lines = []
    for name, s in summary.items():
        label = methods.get(name).label
        for key in [k for k in s if k.startswith("test_accuracy_minus_")]:
            other = methods.get(key.removeprefix("test_accuracy_minus_")).label
            v = _verdict(s[key], 100, " points", "higher", "lower")
            lines.append(f"- {label} − {other}, test accuracy: {v}")
        v = _verdict(s["aopc_minus_random"], 1, "", "more faithful than random maps", "less faithful than random maps")
        lines.append(f"- {label}, AOPC of its own map − random maps on the same model: {v}")
        if "srg_minus_random" in s:
            v = _verdict(
                s["srg_minus_random"], 1, "", "more faithful than random maps", "less faithful than random maps"
            )
            lines.append(f"- {label}, SRG of its own map − random maps on the same model: {v}")
        for key, score in (("aopc_minus_shap", "AOPC"), ("srg_minus_shap", "SRG")):
            if key in s:
                v = _verdict(s[key], 1, "", "more faithful than SHAP", "less faithful than SHAP")
                lines.append(f"- {label}, {score} of its own map − post-hoc SHAP of the same model: {v}")
        for key, _, floor, which in FLOOR_PAIRS:
            if key in s:
                v = _verdict(s[key], 1, "", "beats this floor", "below this floor")
                lines.append(f"- {label}, {which}Pearson with {teacher} (true class) − {FLOOR_LABEL[floor]}: {v}")
    return lines


def faithfulness_table(summary: dict) -> list[str]:
    """Same-model faithfulness: on each model, MoRF AOPC and SRG of its own map, of post-hoc SHAP of that
    same model and of random maps."""
    rows = [(n, s["faithfulness"]) for n, s in summary.items() if "faithfulness" in s]
    if not rows:
        return []
    lines = [
        "",
        "Same-model faithfulness: on each model, its own map, post-hoc SHAP of that model (predicted class) and"
        " random maps, mean ± std over seeds. AOPC on the MoRF path; SRG = area under LeRF − area under MoRF"
        " (0 for random maps). Higher is more faithful; compare within a row.",
        "",
        "| method | AOPC (own) | AOPC (SHAP, same model) | AOPC (random) | SRG (own) | SRG (SHAP, same model) | SRG (random) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, f in rows:
        cells = [f[m]["aopc"] for m in MAPS] + [f[m]["srg"] for m in MAPS]
        lines.append("| " + " | ".join([methods.get(name).label] + [_cell(c, 4) for c in cells]) + " |")
    return lines


def fidelity_table(summary: dict, teacher: str = "SHAP of A") -> list[str]:
    """Agreement with the teacher (`teacher` for the true class, held-out images) and its two floors."""
    rows = [(n, s["fidelity"]) for n, s in summary.items() if "fidelity" in s]
    if not rows:
        return []
    lines = [
        "",
        f"Agreement with {teacher} for the true class on the held-out MoRF images, mean ± std over seeds"
        " (per image, then averaged). Floors: the class-mean training map of the true class (an oracle: it is"
        " given the label), of the model's predicted class (what the classifier alone gives), a random map."
        " A head with a map per class is also scored with its map of the true class (given the label, as the"
        " oracle floor and SHAP are).",
        "",
        "| method | Pearson (map) | Pearson (its map of the true class) | Pearson (true-class mean) |"
        " Pearson (predicted-class mean) | Pearson (random) | Spearman (map) | top-10% IoU (map) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, f in rows:
        cells = [f["map"]["pearson"], f.get(GIVEN, {}).get("pearson"), f["class_mean"]["pearson"],
                 f.get("class_mean_pred", {}).get("pearson"), f["random"]["pearson"], f["map"]["spearman"],
                 f["map"]["iou_top"]]  # fmt: skip
        lines.append("| " + " | ".join([methods.get(name).label] + [_cell(c, 3) for c in cells]) + " |")
    return lines


def _cell(stat: dict | None, digits: int = 4) -> str:
    if stat is None:
        return "—"
    if stat["std"] is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown(summary: dict, title: str, seeds: list[int], teacher: str = "SHAP of A") -> str:
    lines = [
        f"## {title}",
        "",
        f"Mean ± sample std over seeds {seeds}. Test accuracy is reported only; models and params are picked"
        " on validation accuracy. AOPC: MoRF of each method's own map (higher = more faithful); random maps"
        " on the same model are the floor.",
        "",
        "| method | test accuracy | val accuracy | AOPC (own map) | AOPC (random map) | epochs | map |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in summary.items():
        m = methods.get(name)
        epochs = f"{s['best_epoch']['mean']:.1f} / {s['epochs_run']['mean']:.1f}" if "best_epoch" in s else "-"
        lines.append("| " + " | ".join([m.label] + [_cell(s[k]) for k in STATS] + [epochs, m.map_kind]) + " |")
    lines += [
        "",
        "Epochs: the best validation epoch / the epochs run, mean over seeds. IMPACTX, its control and WAE"
        " train on top of A (the baseline's epochs, then their own); ABN starts from A's initial weights.",
        *faithfulness_table(summary),
        *fidelity_table(summary, teacher),
        "",
        "Paired over seeds (mean difference ± half-width of its 95% t-interval):",
        "",
        *verdicts(summary, teacher),
    ]
    return "\n".join(lines) + "\n"


def mean_curves(
    records: list[dict], order: list[str], removal: str = "morf"
) -> dict[str, tuple[np.ndarray, float, np.ndarray | None]]:
    """{label: (mean curve, mean AOPC, std of the curve over seeds, None with one seed)} per method over
    its seeds, in `order`, and of random maps over every run (no std): what the plot data and the figures
    show. removal: morf (most relevant removed first) or lerf (least relevant first)."""

    def curve_aopc(r: dict, map_: str) -> tuple[list, float]:
        if removal == "morf":
            return (r["morf_curve"], r["aopc"]) if map_ == "own" else (r["random_curve"], r["aopc_random"])
        f = r["faithfulness"][map_]
        return f["lerf_curve"], f["aopc_lerf"]

    def mean(rs: list[tuple[list, float]], spread: bool) -> tuple[np.ndarray, float, np.ndarray | None]:
        curves = np.array([c for c, _ in rs])
        std = curves.std(0) if spread and len(rs) > 1 else None
        return curves.mean(0), float(np.mean([a for _, a in rs])), std

    out = {}
    for name in order:
        rs = [curve_aopc(r, "own") for r in records if r["method"] == name]
        if rs:
            out[methods.get(name).label] = mean(rs, spread=True)
    out[RANDOM] = mean([curve_aopc(r, "random") for r in records], spread=False)
    return out


def morf_rows(records: list[dict], order: list[str]) -> list[dict]:
    """The mean MoRF curves in DVC's long format: one row per (method, fraction), so the plot has one
    colour per method whatever methods ran."""
    fractions = records[0]["morf_fractions"]
    return [
        {"method": name, "fraction": f, "probability": float(p)}
        for name, (curve, _, _) in mean_curves(records, order).items()
        for f, p in zip(fractions, curve, strict=False)
    ]
