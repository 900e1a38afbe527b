"""End to end: the whole `dvc repro` on tiny params (two seeds, every method) in a temporary repo copy."""

import json

import numpy as np
import pytest
import torch
from conftest import run, tiny_project

METHODS = ["impactx", "impactx_lambda0", "abn", "wae"]
SEEDS = [0, 1]
STAGES = (
    ["fetch_data"]
    + [f"{s}@{seed}" for s in ("finetune", "shap") for seed in SEEDS]
    + [f"{s}@{m}-{seed}" for s in ("train", "evaluate") for m in METHODS for seed in SEEDS]
    + [f"evaluate_baseline@{seed}" for seed in SEEDS]
    + ["compare"]
)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tiny_project(tmp_path_factory.mktemp("project"))
    first = run(["dvc", "repro"], root)
    return root, first


@pytest.mark.e2e
def test_repro_runs_every_method_and_seed_and_writes_table2(project):
    root, first = project
    assert [s for s in STAGES if f"Running stage '{s}'" not in first.stdout] == []
    for seed in SEEDS:
        maps = np.load(root / f"shap/seed{seed}/maps.npy")
        assert maps.shape == (96, 3, 32, 32) and np.abs(maps).max() > 0
        for m in ["baseline", *METHODS]:
            assert (root / f"models/{m}/seed{seed}.pt").stat().st_size > 0
    table = json.loads((root / "metrics/comparison.json").read_text())
    assert list(table) == ["baseline", *METHODS]
    for m, row in table.items():
        assert row["seeds"] == SEEDS
        for stat in ("test_accuracy", "val_accuracy", "aopc", "aopc_random"):
            per_seed = [json.loads((root / f"results/{m}/seed{s}.json").read_text())[stat] for s in SEEDS]
            assert row[stat]["mean"] == pytest.approx(np.mean(per_seed))
            assert row[stat]["std"] == pytest.approx(np.std(per_seed, ddof=1))
    md = (root / "metrics/comparison.md").read_text()
    assert "| method | test accuracy | val accuracy | AOPC (own map) | AOPC (random map) | map |" in md
    for label in ("Baseline A", "IMPACTX", "IMPACTX, λ = 0 (control)", "ABN", "WAE"):
        assert f"| {label} | " in md
    rows = json.loads((root / "plots/morf.json").read_text())
    assert len(rows) == 5 and set(rows[0]) == {"fraction", "baseline", *METHODS, "random"}
    for fig in ("figures/explanations.png", "figures/morf.png"):
        assert (root / fig).stat().st_size > 0
    assert "MLflow UI: mlflow ui --backend-store-uri sqlite:///mlflow.db" in first.stdout
    assert not list(root.glob(".shap_work/*"))  # shards are removed once maps.npy is in place
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], root).stdout)
    assert "metrics/comparison.json" in json.dumps(shown)


@pytest.mark.e2e
def test_stage2_shares_stage1_and_shap_of_its_seed(project):
    root, _ = project
    lock = (root / "dvc.lock").read_text()
    import yaml

    stages = yaml.safe_load(lock)["stages"]
    for seed in SEEDS:
        shap_md5 = next(o["md5"] for o in stages[f"shap@{seed}"]["outs"] if o["path"].endswith("maps.npy"))
        base_md5 = stages[f"finetune@{seed}"]["outs"][0]["md5"]
        for m in METHODS:
            deps = {d["path"]: d["md5"] for d in stages[f"train@{m}-{seed}"]["deps"]}
            assert deps[f"shap/seed{seed}/maps.npy"] == shap_md5 and deps[f"models/baseline/seed{seed}.pt"] == base_md5
    impactx = torch.load(root / "models/impactx/seed0.pt")
    baseline = torch.load(root / "models/baseline/seed0.pt")
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
    assert set(STAGES) <= set(by_stage)
    assert len({r.data.tags["mlflow.parentRunId"] for s, r in by_stage.items() if s in STAGES}) == 1
    for m in ["baseline", *METHODS]:
        for seed in SEEDS:
            stage = f"evaluate_baseline@{seed}" if m == "baseline" else f"evaluate@{m}-{seed}"
            r = client.search_runs(
                [exp.experiment_id], f"tags.method = '{m}' and tags.seed = '{seed}' and tags.dvc_stage LIKE 'evaluate%'"
            )
            assert len(r) == 1, (m, seed)
            tags = r[0].data.tags
            assert (tags["dataset"], tags["backbone"]) == ("digits", "lenet5")
            assert {"test_accuracy", "val_accuracy", "aopc", "aopc_random"} <= set(r[0].data.metrics), stage
    finetune = by_stage["finetune@0"]
    assert len(client.get_metric_history(finetune.info.run_id, "val_accuracy")) == 2  # per epoch
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    for m in ["baseline", *METHODS]:
        name = f"digits-lenet5-{m}"
        champ = client.get_model_version_by_alias(name, "champion")
        best = max(
            json.loads((root / f"results/{m}/seed{s}.json").read_text())["val_accuracy"] for s in SEEDS
        )  # picked by validation accuracy, never by test
        assert float(champ.tags["val_accuracy"]) == pytest.approx(best, abs=1e-6)
        out = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(np.random.rand(2, 3, 32, 32).astype(np.float32))
        assert np.asarray(out).shape == (2, 10)
    impactx = mlflow.pytorch.load_model("models:/digits-lenet5-impactx@champion")
    logits, explanation = impactx.explain(torch.rand(2, 3, 32, 32))  # class and map in one pass
    assert logits.shape == (2, 10) and explanation.shape == (2, 3, 32, 32)


@pytest.mark.e2e
def test_second_repro_is_a_noop(project):
    root, _ = project
    again = run(["dvc", "repro"], root)
    assert "Running stage" not in again.stdout


@pytest.mark.e2e
def test_bad_params_fail_in_one_line_and_leave_stage_undone(project):
    root, _ = project
    good = (root / "params.yaml").read_text()
    try:
        (root / "params.yaml").write_text(good.replace("epochs: 2", "epochs: two", 1))
        bad = run(["dvc", "repro", "finetune@0"], root, check=False)
        assert bad.returncode != 0
        assert "error: params.yaml: finetune.epochs: Input should be a valid integer" in bad.stderr
        assert "changed" in run(["dvc", "status", "finetune@0"], root).stdout
    finally:
        (root / "params.yaml").write_text(good)
    assert "Running stage" not in run(["dvc", "repro"], root).stdout


@pytest.mark.e2e
def test_lambda_experiment_reruns_stage_two_only(project):
    root, _ = project
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "results"], root)
    exp = run(["dvc", "exp", "run", "-S", "impactx.lambda=0.4", "-S", "methods=[impactx]"], root)
    ran = [s for s in STAGES if f"Running stage '{s}'" in exp.stdout]
    assert ran == ["train@impactx-0", "train@impactx-1", "evaluate@impactx-0", "evaluate@impactx-1", "compare"]


@pytest.mark.e2e
@pytest.mark.parametrize("backbone", ["mobilenet_v2", "efficientnet_b2"])
def test_torchvision_backbones_end_to_end_without_pretrained_weights(tmp_path, backbone):
    root = tiny_project(tmp_path, seeds=[0], model={"backbone": backbone, "pretrained": False})
    out = run(["dvc", "repro"], root)
    assert "Running stage 'compare'" in out.stdout
    table = json.loads((root / "metrics/comparison.json").read_text())
    assert list(table) == ["baseline", *METHODS]
    assert all(0 <= row["test_accuracy"]["mean"] <= 1 and row["seeds"] == [0] for row in table.values())
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("impactx")
    runs = client.search_runs([exp.experiment_id], "tags.dvc_stage = 'evaluate@abn-0'")
    assert runs[0].data.tags["backbone"] == backbone
