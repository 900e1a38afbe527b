import json

import numpy as np
import pytest

from impactx import compare
from impactx.attribution import label
from impactx.params import parse_params


def record(method, seed, acc, aopc=0.3):
    return {
        "method": method, "seed": seed, "map": "m", "test_accuracy": acc, "val_accuracy": acc - 0.01,
        "aopc": aopc, "aopc_random": 0.1, "morf_fractions": [0.0, 0.5, 1.0],
        "morf_curve": [0.9, 0.5, 0.2], "random_curve": [0.9, 0.8, 0.7],
    }  # fmt: skip


def test_summary_is_mean_and_sample_std_per_method_in_table_order():
    records = [record("wae", 0, 0.5), record("baseline", 1, 0.7), record("baseline", 0, 0.6), record("wae", 1, 0.6)]
    s = compare.summarize(records, ["baseline", "impactx", "wae"])
    assert list(s) == ["baseline", "wae"] and s["baseline"]["seeds"] == 2
    assert s["baseline"]["test_accuracy"]["mean"] == pytest.approx(0.65)
    assert s["baseline"]["test_accuracy"]["std"] == pytest.approx(np.std([0.6, 0.7], ddof=1))
    numbers = json.dumps(s)
    assert all(
        isinstance(v, (int, float)) or v is None
        for m in s.values()
        for x in m.values()
        for v in (x.values() if isinstance(x, dict) else [x])
    ), numbers  # fmt: skip  (a DVC metric)
    md = compare.markdown(s, "toy", [0, 1])
    assert (
        "| Baseline A | 0.6500 ± 0.0707 | 0.6400 ± 0.0707 | 0.3000 ± 0.0000 | 0.1000 ± 0.0000 | - | SHAP of A, post hoc |"
        in md
    )
    assert "| WAE |" in md and "seeds [0, 1]" in md


def test_single_seed_has_no_std():
    s = compare.summarize([record("impactx", 0, 0.5)], ["baseline", "impactx"])
    assert s["impactx"]["test_accuracy"]["std"] is None
    assert "| IMPACTX | 0.5000 | 0.4900 |" in compare.markdown(s, "toy", [0])


def test_morf_rows_are_long_format_one_series_per_method_and_random():
    rows = compare.morf_rows([record("impactx", 0, 0.5), record("abn", 0, 0.5)], ["baseline", "impactx", "abn"])
    assert [r["method"] for r in rows] == ["IMPACTX"] * 3 + ["ABN"] * 3 + ["random maps"] * 3
    assert rows[1] == {"method": "IMPACTX", "fraction": 0.5, "probability": 0.5}
    assert rows[-2] == {"method": "random maps", "fraction": 0.5, "probability": 0.8}


def test_paired_differences_have_t_intervals_and_plain_verdicts():
    base = [0.60, 0.62, 0.58]
    records = [record("baseline", i, a) for i, a in enumerate(base)]
    records += [record("impactx", i, a + d) | {"training": {"best_epoch": 4, "epochs_run": 9}}
                for i, (a, d) in enumerate(zip(base, [0.020, 0.021, 0.019], strict=False))]  # fmt: skip
    records += [
        record("impactx_lambda0", i, a + d) for i, (a, d) in enumerate(zip(base, [0.01, 0.02, 0.03], strict=False))
    ]
    s = compare.summarize(records, ["baseline", "impactx", "impactx_lambda0"])
    vs_base = s["impactx"]["test_accuracy_minus_baseline"]
    assert vs_base["mean"] == pytest.approx(0.020) and vs_base["n"] == 3
    assert vs_base["ci95"] == pytest.approx(4.302653 * 0.001 / np.sqrt(3), rel=1e-4)  # t(0.975, 2)·sd/√n
    vs_control = s["impactx"]["test_accuracy_minus_impactx_lambda0"]
    assert vs_control["mean"] == pytest.approx(0.0) and vs_control["ci95"] > 0.01
    assert "test_accuracy_minus_baseline" not in s["baseline"]
    assert s["impactx"]["best_epoch"]["mean"] == 4 and s["impactx"]["epochs_run"]["mean"] == 9
    md = compare.markdown(s, "toy", [0, 1, 2])
    assert "- IMPACTX − Baseline A, test accuracy: +2.0 ± 0.2 points (3 seeds): higher" in md
    assert "- IMPACTX − IMPACTX, λ = 0 (control), test accuracy: +0.0 ± 2.6 points (3 seeds): not distinguishable" in md
    assert "| 4.0 / 9.0 |" in md
    assert "AOPC of its own map − random maps on the same model: +0.200 ± 0.000 (3 seeds): more faithful" in md


def test_the_method_under_test_is_paired_with_every_compared_method_and_the_others_with_the_baseline():
    records = [record(m, s, acc + s / 100) for m, acc in (("baseline", 0.6), ("impactx", 0.63), ("abn", 0.62), ("wae", 0.61))
               for s in range(3)]  # fmt: skip
    s = compare.summarize(records, ["baseline", "impactx", "abn", "wae"])
    assert [k for k in s["impactx"] if k.startswith("test_accuracy_minus_")] == [
        "test_accuracy_minus_baseline", "test_accuracy_minus_abn", "test_accuracy_minus_wae"
    ]  # fmt: skip
    assert s["impactx"]["test_accuracy_minus_abn"]["mean"] == pytest.approx(0.01)
    assert [k for k in s["abn"] if k.startswith("test_accuracy_minus_")] == ["test_accuracy_minus_baseline"]
    assert "- IMPACTX − WAE, test accuracy: +2.0 ± 0.0 points (3 seeds): higher" in compare.markdown(
        s, "toy", [0, 1, 2]
    )


def test_the_best_experiment_is_picked_on_validation_only():
    from impactx import ImpactXError
    from impactx.experiments import best_experiment

    rows = [
        {"Experiment": None, "rev": "workspace", "impactx.val_accuracy.mean": 0.99},  # not an experiment
        {"Experiment": "a", "impactx.val_accuracy.mean": 0.70, "impactx.test_accuracy.mean": 0.9},
        {"Experiment": "b", "impactx.val_accuracy.mean": 0.72, "impactx.test_accuracy.mean": 0.1},
        {"Experiment": "c", "impactx.val_accuracy.mean": None},
    ]
    assert best_experiment(rows, "impactx.val_accuracy.mean")["Experiment"] == "b"
    with pytest.raises(ImpactXError, match="not a validation metric"):
        best_experiment(rows, "impactx.test_accuracy.mean")
    with pytest.raises(ImpactXError, match="no experiment has 'abn.val_accuracy.mean'"):
        best_experiment(rows, "abn.val_accuracy.mean")


def test_same_model_faithfulness_and_the_predicted_class_floor_are_paired_per_seed():
    def with_maps(method, seed, own, shap_):
        faith = {m: {"aopc": a, "aopc_lerf": a - srg_, "srg": srg_} for m, (a, srg_) in
                 {"own": own, "shap": shap_, "random": (0.1, 0.0)}.items()}  # fmt: skip
        fid = {w: {"pearson": p, "spearman": p, "iou_top": p} for w, p in
               {"map": 0.5 + seed / 100, "class_mean": 0.6, "class_mean_pred": 0.4, "random": 0.0}.items()}  # fmt: skip
        if method == "impactx":  # a head with a map per class: its map of the true class too
            fid["map_given_class"] = {"pearson": 0.62 + seed / 50, "spearman": 0.6, "iou_top": 0.3}
        return record(method, seed, 0.6) | {"faithfulness": faith, "fidelity": fid}

    records = [with_maps("baseline", s, (0.3, 0.2), (0.3, 0.2)) for s in range(3)]
    records += [with_maps("impactx", s, (0.25 + s / 100, 0.1), (0.35, 0.3)) for s in range(3)]
    s = compare.summarize(records, ["baseline", "impactx"])
    assert s["impactx"]["aopc_minus_shap"]["mean"] == pytest.approx(-0.09)
    assert s["impactx"]["srg_minus_shap"]["mean"] == pytest.approx(-0.2) and s["impactx"]["srg_minus_shap"]["n"] == 3
    assert "aopc_minus_shap" not in s["baseline"]  # its own map is SHAP
    assert s["impactx"]["pearson_minus_class_mean_pred"]["mean"] == pytest.approx(0.11)
    md = compare.markdown(s, "toy", [0, 1, 2])
    assert "| IMPACTX | 0.2600 ± 0.0100 | 0.3500 ± 0.0000 | 0.1000 ± 0.0000 | 0.1000 ± 0.0000 | 0.3000 ± 0.0000 |" in md
    assert (
        "- IMPACTX, SRG of its own map − post-hoc SHAP of the same model: -0.200 ± 0.000 (3 seeds): less faithful than SHAP"
        in md
    )
    assert (
        "- IMPACTX, Pearson with SHAP of A (true class) − the class-mean map of the true class: -0.090 ± 0.025 (3 seeds): below this floor"
        in md
    )
    assert (
        "- IMPACTX, Pearson with SHAP of A (true class) − the class-mean map of the predicted class: +0.110 ± 0.025 (3 seeds): beats this floor"
        in md
    )
    assert (
        "- IMPACTX, its map of the true class: Pearson with SHAP of A (true class) − the class-mean map of the true"
        " class: +0.040 ± 0.050 (3 seeds): not distinguishable" in md
    )
    assert "| IMPACTX | 0.510 ± 0.010 | 0.640 ± 0.020 | 0.600 ± 0.000 |" in md
    assert "| Baseline A | 0.510 ± 0.010 | — | 0.600 ± 0.000 |" in md  # one map only
    ig = compare.markdown(
        s, "toy", [0, 1, 2], label(parse_params({"attribution": {"method": "integrated_gradients"}}).attribution)
    )
    assert "Agreement with Integrated Gradients of A for the true class" in ig and "Pearson with SHAP" not in ig
    assert "- IMPACTX, Pearson with Integrated Gradients of A (true class) − the class-mean map of the true class" in ig
    uri = "models:/cifar10-mobilenet_v2-baseline/1"
    assert label(parse_params({"attribution": {"teacher": uri}}).attribution) == f"SHAP of {uri}"


def test_the_headline_metric_is_the_means_and_the_paired_test_differences_named_as_in_the_table():
    records = [record(m, s, acc) for m, accs in (("baseline", (0.6, 0.62, 0.61)), ("impactx", (0.63, 0.64, 0.62)))
               for s, acc in enumerate(accs)]  # fmt: skip
    summary = compare.summarize(records, ["baseline", "impactx"])
    head = compare.headline(summary)
    assert head["impactx"]["val_accuracy"]["mean"] == summary["impactx"]["val_accuracy"]["mean"]
    assert head["impactx"]["test_accuracy_minus_baseline"] == {
        k: summary["impactx"]["test_accuracy_minus_baseline"][k] for k in ("mean", "ci95")
    }
    assert set(head["baseline"]) == {"test_accuracy", "val_accuracy", "aopc"}  # no std, no curves
