"""End to end: the whole `dvc repro` on tiny params (two seeds, every method and the control) in a
temporary copy of the repo; then what a change re-runs, and a method added by one module and its params."""

import json
import re

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, run, set_params, tiny_project

METHODS = ["impactx", "abn", "wae"]
ROWS = ["baseline", "impactx", "impactx_lambda0", "abn", "wae"]
SEEDS = [0, 1]


def train_stage(method: str, seed: int) -> str:
    if method == "baseline":
        return f"baseline@{seed}"
    return f"train_control@{method}-{seed}" if method == "impactx_lambda0" else f"train@{method}-{seed}"


def evaluate_stage(method: str) -> str:
    kind = {"baseline": "_baseline", "impactx_lambda0": "_control"}.get(method, "")
    return f"evaluate{kind}@{method}"


STAGES = (
    ["check_params", "fetch_data"]
    + [f"attribution@{s}" for s in SEEDS]
    + [f"teacher@{s}" for s in SEEDS]
    + [train_stage(m, s) for m in ROWS for s in SEEDS]
    + [evaluate_stage(m) for m in ROWS]
    + ["compare"]
)


def ran(out: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", out)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tiny_project(tmp_path_factory.mktemp("project"))
    first = run(["dvc", "repro"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "results"], root)
    return root, first


@pytest.mark.e2e
def test_repro_runs_every_method_and_seed_and_writes_table2(project):
    root, first = project
    assert sorted(ran(first.stdout)) == sorted(STAGES)
    for seed in SEEDS:
        maps = np.load(root / f"attribution/seed{seed}/maps.npy")
        assert maps.shape == (96, 3, 32, 32) and np.abs(maps).max() > 0
        for m in ROWS:
            assert (root / f"models/{m}/seed{seed}.pt").stat().st_size > 0
    table = json.loads((root / "metrics/comparison.json").read_text())
    assert list(table) == ROWS
    for m, row in table.items():
        assert row["seeds"] == len(SEEDS)
        for stat in ("test_accuracy", "val_accuracy", "aopc", "aopc_random"):
            per_seed = [json.loads((root / f"results/{m}/seed{s}.json").read_text())[stat] for s in SEEDS]
            assert row[stat]["mean"] == pytest.approx(np.mean(per_seed))
            assert row[stat]["std"] == pytest.approx(np.std(per_seed, ddof=1))
    md = (root / "metrics/comparison.md").read_text()
    assert "| method | test accuracy | val accuracy | AOPC (own map) | AOPC (random map) | epochs | map |" in md
    assert "- IMPACTX − IMPACTX, λ = 0 (control), test accuracy: " in md and "(2 seeds): " in md
    assert table["impactx"]["test_accuracy_minus_impactx_lambda0"]["n"] == 2
    assert table["baseline"]["epochs_run"]["mean"] == 2  # TINY: 2 epochs, no early stopping
    assert "Agreement with SHAP of A for the true class" in md and "| IMPACTX | " in md.split("Agreement", 1)[1]
    fid = json.loads((root / "results/impactx/seed0.json").read_text())["fidelity"]
    assert set(fid) == {"map", "class_mean", "class_mean_pred", "random"} and -1 <= fid["map"]["pearson"] <= 1
    assert "Same-model faithfulness" in md and "post-hoc SHAP of the same model" in md
    assert set(table["impactx"]["faithfulness"]) == {"own", "shap", "random"} and "srg_minus_shap" in table["impactx"]
    for label in ("Baseline A", "IMPACTX", "IMPACTX, λ = 0 (control)", "ABN", "WAE"):
        assert f"| {label} | " in md
    rows = json.loads((root / "plots/morf.json").read_text())
    assert {r["method"] for r in rows} == {
        "Baseline A",
        "IMPACTX",
        "IMPACTX, λ = 0 (control)",
        "ABN",
        "WAE",
        "random maps",
    }
    assert len(rows) == 6 * 5 and set(rows[0]) == {"method", "fraction", "probability"}
    for fig in ("figures/explanations.png", "figures/morf.png"):
        assert (root / fig).stat().st_size > 0
    ui = next(line for line in first.stdout.splitlines() if "MLflow UI: " in line)  # the compare run's address
    assert (
        f"mlflow ui --backend-store-uri sqlite:///{root / 'mlflow.db'}, then http://127.0.0.1:5000/#/experiments/" in ui
    )
    assert "/runs/" in ui and "?workflowType=machine_learning" in ui  # the runs pages, not the GenAI overview
    assert not list(root.glob(".attribution_work/*"))  # shards are removed once maps.npy is in place
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], root).stdout)
    assert "metrics/headline.json" in json.dumps(shown) and "metrics/comparison.json" not in json.dumps(shown)
    headline = json.loads((root / "metrics/headline.json").read_text())
    assert headline["impactx"]["val_accuracy"]["mean"] == table["impactx"]["val_accuracy"]["mean"]
    assert len(run(["dvc", "metrics", "show"], root).stdout) < 5000  # the full table printed 14,000 characters
    plots = json.loads(run(["dvc", "plots", "show", "--json"], root).stdout)
    # the curves (Vega: loads from a CDN) and the two figures as images, which render offline
    kinds = {k: [p["type"] for p in v] for k, v in plots["data"].items()}
    assert kinds == {"plots/morf.json": ["vega"], "figures/morf.png": ["image"], "figures/explanations.png": ["image"]}
    assert "probability of the predicted class" in json.dumps(plots)  # the template's labelled y axis


@pytest.mark.e2e
def test_stage2_shares_stage1_and_shap_of_its_seed(project):
    root, _ = project
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    for seed in SEEDS:
        shap_md5 = next(o["md5"] for o in stages[f"attribution@{seed}"]["outs"] if o["path"].endswith("maps.npy"))
        base_md5 = stages[f"baseline@{seed}"]["outs"][0]["md5"]
        for m in ["impactx", "impactx_lambda0", "abn", "wae"]:
            deps = {d["path"]: d["md5"] for d in stages[train_stage(m, seed)]["deps"]}
            assert (
                deps[f"attribution/seed{seed}/maps.npy"] == shap_md5
                and deps[f"models/baseline/seed{seed}.pt"] == base_md5
            )
    impactx = torch.load(root / "models/impactx/seed0.pt")["state_dict"]
    baseline = torch.load(root / "models/baseline/seed0.pt")["state_dict"]
    assert torch.equal(impactx["m.stem.0.weight"], baseline["backbone.stem.0.weight"])  # M is stage 1's, frozen


@pytest.mark.e2e
def test_mlflow_runs_are_tagged_and_registered(project):
    root, _ = project
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("impactx")
    runs = client.search_runs([exp.experiment_id])
    by_stage = {r.data.tags.get("dvc_stage"): r for r in runs}
    tracked = [s for s in STAGES if not s.startswith("teacher@") and s != "check_params"]  # no MLflow run
    assert set(tracked) <= set(by_stage)
    assert len({r.data.tags["mlflow.parentRunId"] for s, r in by_stage.items() if s in tracked}) == 1
    for m in ROWS:
        for seed in SEEDS:
            found = client.search_runs(
                [exp.experiment_id], f"tags.dvc_stage = '{evaluate_stage(m)}' and tags.seed = '{seed}'"
            )
            assert len(found) == 1, (m, seed)
            r = found[0]
            assert (r.data.tags["method"], r.data.tags["dataset"], r.data.tags["backbone"]) == (m, "digits", "lenet5")
            assert {"test_accuracy", "val_accuracy", "aopc", "aopc_random"} <= set(r.data.metrics)
            assert r.info.run_name == f"{evaluate_stage(m)}-seed{seed}"  # the stage, the method, the seed
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs
    table = json.loads((root / "metrics/comparison.json").read_text())
    paired = "impactx.test_accuracy_minus_impactx_lambda0"  # the verdict, with its interval, as MLflow metrics
    assert by_stage["compare"].data.metrics[f"{paired}.ci95"] == pytest.approx(table["impactx"][paired[8:]]["ci95"])
    control = client.search_runs([exp.experiment_id], f"tags.dvc_stage = '{evaluate_stage('impactx_lambda0')}'")
    assert {r.data.params["effective.lambda"] for r in control} == {"0.0"}  # not the impactx section's λ
    assert by_stage[train_stage("impactx_lambda0", 0)].data.params["effective.lambda"] == "0.0"
    assert len(client.get_metric_history(by_stage["baseline@0"].info.run_id, "val_accuracy")) == 2  # per epoch
    inputs = client.get_run(by_stage["baseline@0"].info.run_id).inputs.dataset_inputs  # mlflow.log_input
    assert sorted(i.tags[0].value for i in inputs) == ["training", "validation"]
    assert {i.dataset.name for i in inputs} == {"digits-training", "digits-validation"}
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    for m in ROWS:
        name = f"digits-lenet5-{m}"
        champ = client.get_model_version_by_alias(name, "champion")
        best = max(json.loads((root / f"results/{m}/seed{s}.json").read_text())["val_accuracy"] for s in SEEDS)
        assert float(champ.tags["val_accuracy"]) == pytest.approx(best, abs=1e-6)  # by validation, never test
        out = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(
            np.random.rand(2, 3, 32, 32).astype(np.float32)
        )  # class, name, probabilities and, for a method with its own map, the map: one pass
        assert len(out) == 2 and len(out.probabilities[0]) == 10 and out.class_name[0] in [str(d) for d in range(10)]
        own_map = out["map"][0]
        assert own_map is None if m == "baseline" else np.array(own_map).shape == (3, 32, 32)
        versions = client.search_model_versions(f"name = '{name}'")  # one per checkpoint, tagged
        assert sorted(v.tags["seed"] for v in versions) == [str(s) for s in SEEDS], name
        assert {v.tags["method"] for v in versions} == {m} and all(
            len(v.tags["checkpoint_md5"]) == 32 for v in versions
        )
    run(["python", "-m", "stages.evaluate", "baseline"], root)  # unchanged checkpoints evaluated again
    assert len(client.search_model_versions("name = 'digits-lenet5-baseline'")) == len(SEEDS)  # no new version


@pytest.mark.e2e
def test_second_repro_is_a_noop(project):
    root, _ = project
    assert ran(run(["dvc", "repro"], root).stdout) == []


CONTROL = {"train_control@impactx_lambda0-0", "train_control@impactx_lambda0-1"}
CHECK = "check_params"  # depends on every key: any change re-checks the whole file


def changed_stages(root) -> set[str]:
    return set(json.loads(run(["dvc", "status", "--json"], root).stdout))


@pytest.mark.e2e
@pytest.mark.parametrize(
    "change,expected",
    [
        ({"impactx": {"lambda": 0.4}}, {"train@impactx-0", "train@impactx-1", *CONTROL, CHECK}),  # controls read it
        ({"impactx": {"epochs": 3}}, {"train@impactx-0", "train@impactx-1", *CONTROL, CHECK}),  # the control shares it
        ({"abn": {"lr": 0.01}}, {"train@abn-0", "train@abn-1", CHECK}),
        ({"wae": {"batch_size": 16}}, {"train@wae-0", "train@wae-1", CHECK}),
        ({"baseline": {"epochs": 3}}, {"baseline@0", "baseline@1", CHECK}),
        (
            {"attribution": {"method": "integrated_gradients"}},
            {"attribution@0", "attribution@1", "teacher@0", "teacher@1", "compare", CHECK},
        ),
        (  # the SHAP maps' forward passes: training maps, teacher maps, post-hoc SHAP of every method
            {"inference": {"dtype": "bfloat16"}},
            {"attribution@0", "attribution@1", "teacher@0", "teacher@1", CHECK, *(evaluate_stage(m) for m in ROWS)},
        ),
    ],
)
def test_a_method_setting_changes_only_that_methods_stages(project, change, expected):
    root, _ = project
    good = (root / "params.yaml").read_text()
    try:
        set_params(root, **change)
        assert changed_stages(root) == expected
    finally:
        (root / "params.yaml").write_text(good)
    assert changed_stages(root) == set()


@pytest.mark.e2e
def test_a_teachers_maps_are_computed_once_for_every_seed(project):
    """R = SHAP of a registered model: one teacher, one set of maps; the second seed's stage reuses them."""
    root, _ = project
    good = (root / "params.yaml").read_text()
    try:
        set_params(root, attribution={"teacher": "models:/digits-lenet5-baseline/1"})
        out = run(["dvc", "repro", "attribution@0", "attribution@1"], root).stdout
        assert sorted(ran(out)) == ["attribution@0", "attribution@1"]
        metas = [json.loads((root / f"attribution/seed{s}/maps.json").read_text()) for s in SEEDS]
        assert [m["map_seed"] for m in metas] == [0, 0] and metas[0]["fingerprint"] == metas[1]["fingerprint"]
        # at least one stage read the other's maps (both may: the teacher is one seed's A, whose own maps match)
        assert {m["reused_from"] for m in metas} - {None} in ({"attribution/seed0"}, {"attribution/seed1"},
                                                              {"attribution/seed0", "attribution/seed1"})  # fmt: skip
        assert metas[0]["reused_from"] != "attribution/seed0" and metas[1]["reused_from"] != "attribution/seed1"
        assert "its maps reused, none computed" in out
        maps = [np.load(root / f"attribution/seed{s}/maps.npy") for s in SEEDS]
        assert maps[0].tobytes() == maps[1].tobytes()
        assert all(m["explained_model"] == "teacher models:/digits-lenet5-baseline/1" for m in metas)
    finally:
        (root / "params.yaml").write_text(good)
        run(["git", "checkout", "--", "dvc.lock"], root)
        run(["dvc", "checkout"], root)
    assert changed_stages(root) == set()


@pytest.mark.e2e
def test_a_queued_grid_reruns_impactx_and_its_controls_only_and_logs_every_run_into_the_projects_store(project):
    """The docs' grid search: queued experiments run in DVC's temporary workspaces, each re-runs IMPACTX's
    stages (and its controls') only, and their MLflow runs and registry versions land in the project's mlflow.db, not in a
    copy DVC deletes."""
    root, _ = project
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("impactx").experiment_id

    def counts():
        runs = client.search_runs([exp_id], "", max_results=5000)
        stages = [r.data.tags.get("dvc_stage") for r in runs]
        versions = client.search_model_versions("name = 'digits-lenet5-impactx'")
        ours = (None, "impactx", "impactx_lambda0")  # IMPACTX's controls read λ too (dvc.yaml)
        others = sum(r.data.tags.get("method") not in ours for r in runs)  # another method's stage
        return (
            stages.count("train@impactx-0") + stages.count("train@impactx-1"),
            stages.count("evaluate@impactx"),
            len(versions),
            others,
        )

    before = counts()
    run(["dvc", "exp", "run", "--queue", "-S", "impactx.lambda=0.3,0.5"], root)  # a two-point grid
    out = run(["dvc", "exp", "run", "--run-all", "-j", "1"], root)
    after = counts()
    # 2 points × 2 seeds, and no other method's stage ran
    assert [a - b for a, b in zip(after, before, strict=True)] == [4, 4, 4, 0], out.stdout[-2000:]
    assert not list(root.glob(".dvc/tmp/exps/**/mlflow.db"))
    picked = run(["python", "-m", "impactx.experiments", "impactx.val_accuracy.mean", "--apply"], root).stdout
    assert "best by impactx.val_accuracy.mean" in picked and "applied" in picked
    assert yaml.safe_load((root / "params.yaml").read_text())["impactx"]["lambda"] in (0.3, 0.5)
    refused = run(["python", "-m", "impactx.experiments", "impactx.test_accuracy.mean"], root, check=False)
    assert refused.returncode == 2 and "not a validation metric" in refused.stderr
    run(["git", "checkout", "--", "."], root)
    run(["dvc", "checkout"], root)


@pytest.mark.e2e
def test_bad_params_fail_in_one_line_and_leave_stage_undone(project):
    root, _ = project
    good = (root / "params.yaml").read_text()
    try:
        (root / "params.yaml").write_text(good.replace("epochs: 2", "epochs: two", 1))
        bad = run(["dvc", "repro", "baseline@0"], root, check=False)
        assert bad.returncode != 0
        assert "error: params.yaml: baseline.epochs: Input should be a valid integer" in bad.stderr
        assert "changed" in run(["dvc", "status", "baseline@0"], root).stdout
    finally:
        (root / "params.yaml").write_text(good)


@pytest.mark.e2e
def test_an_unknown_key_stops_repro_even_when_every_stage_is_cached(project):
    root, _ = project
    good = (root / "params.yaml").read_text()
    try:
        (root / "params.yaml").write_text(good + "foo: 1\n")  # no stage reads it
        bad = run(["dvc", "repro"], root, check=False)
        assert bad.returncode != 0 and "error: params.yaml: unknown key 'foo': remove it" in bad.stderr
        assert ran(bad.stdout) == [CHECK]  # nothing else ran
    finally:
        (root / "params.yaml").write_text(good)


def docs_example(page: str, heading: str) -> str:
    """The first Python block under `heading` of a docs page: what a reader copies."""
    section = (REPO / "docs/guide" / page).read_text().split(heading + "\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def method_example() -> str:
    return docs_example("methods.md", "## Adding a method")


@pytest.mark.e2e
def test_the_docs_method_example_is_one_module_and_its_params(project):
    root, _ = project
    (root / "impactx/methods/smooth.py").write_text(method_example())
    params = yaml.safe_load((root / "params.yaml").read_text())
    set_params(root, methods=[*params["methods"], "smooth"], smooth={"epochs": 2, "batch_size": 32, "smoothing": 0.2})
    out = run(["dvc", "repro"], root)
    assert sorted(ran(out.stdout)) == [
        CHECK,
        "compare",
        "evaluate@smooth",
        "train@smooth-0",
        "train@smooth-1",
    ]  # nothing else
    table = json.loads((root / "metrics/comparison.json").read_text())
    assert list(table) == [*ROWS, "smooth"]
    assert "| A + label smoothing | " in (root / "metrics/comparison.md").read_text()
    plot = run(["dvc", "plots", "show", "--json"], root).stdout  # the plot follows the methods that ran
    assert "A + label smoothing" in plot and "could not find" not in plot
    ckpt = torch.load(root / "models/smooth/seed0.pt")
    assert ckpt["method"] == "smooth" and ckpt["settings"]["smoothing"] == 0.2


@pytest.mark.e2e
def test_the_docs_attribution_example_is_one_module_and_its_params(project):
    """docs/guide/attribution.md's occlusion R, written as the page says, trains IMPACTX on its maps."""
    root, _ = project
    module = root / "impactx/attribution/occlusion.py"
    good = (root / "params.yaml").read_text()
    module.write_text(docs_example("attribution.md", "## Adding an attribution method"))
    try:
        params = yaml.safe_load(good)
        params["attribution"] = {**params["attribution"], "method": "occlusion", "occlusion": {"patch": 8}}
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        out = run(["dvc", "repro", "train@impactx-0"], root)
        assert {"attribution@0", "train@impactx-0"} <= set(ran(out.stdout))
        made = json.loads((root / "attribution/seed0/maps.json").read_text())
        assert made["method"] == "occlusion" and made["patch"] == 8
        maps = np.load(root / "attribution/seed0/maps.npy")
        assert maps.shape == (96, 3, 32, 32) and np.abs(maps).max() > 0
        block = maps[:, :, :8, :8].reshape(len(maps), -1)  # one patch: one value per image
        assert np.allclose(block, block[:, :1])
        ckpt = torch.load(root / "models/impactx/seed0.pt")
        assert ckpt["method"] == "impactx"
    finally:
        module.unlink()
        (root / "params.yaml").write_text(good)
