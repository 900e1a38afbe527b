"""End to end: the whole `dvc repro` on tiny params in a temporary copy of the repo."""

import json

import pytest
import torch
from conftest import run, tiny_project

STAGES = ["fetch_data", "finetune", "shap", "train_impactx", "evaluate"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tiny_project(tmp_path_factory.mktemp("project"))
    first = run(["dvc", "repro"], root)
    return root, first


@pytest.mark.e2e
def test_repro_produces_every_output(project):
    root, first = project
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout
    for out in [
        "data/prepared/dataset.npz",
        "data/prepared/info.json",
        "models/baseline.pt",
        "shap/maps.npy",
        "shap/maps.json",
        "models/impactx.pt",
        "metrics/metrics.json",
        "plots/morf.json",
        "figures/explanations.png",
        "figures/morf.png",
    ]:
        assert (root / out).stat().st_size > 0, out
    import numpy as np

    maps = np.load(root / "shap/maps.npy")
    assert maps.shape == (96, 3, 32, 32) and np.abs(maps).max() > 0
    metrics = json.loads((root / "metrics/metrics.json").read_text())
    assert 0 <= metrics["baseline"]["test_accuracy"] <= 1 and 0 <= metrics["impactx"]["test_accuracy"] <= 1
    assert set(metrics["impactx"]) >= {"aopc_impactx_map", "aopc_shap_map", "aopc_random_map"}
    rows = json.loads((root / "plots/morf.json").read_text())
    assert len(rows) == 5 and rows[0]["fraction"] == 0 and rows[-1]["fraction"] == 1
    assert "MLflow UI: mlflow ui --backend-store-uri sqlite:///mlflow.db" in first.stdout
    assert not list(root.glob(".shap_work/*"))  # shards are removed once maps.npy is in place
    shown = run(["dvc", "metrics", "show", "--json"], root).stdout
    assert "test_accuracy" in shown


@pytest.mark.e2e
def test_mlflow_runs_and_registry(project):
    root, _ = project
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("impactx")
    runs = client.search_runs([exp.experiment_id])
    by_stage = {}
    for r in runs:
        by_stage.setdefault(r.data.tags.get("dvc_stage"), []).append(r)
    assert set(STAGES) <= set(by_stage)
    parents = {r.data.tags["mlflow.parentRunId"] for s in STAGES for r in by_stage[s]}
    assert len(parents) == 1  # one repro, one group
    assert all(r.data.tags["git_revision"] for s in STAGES for r in by_stage[s])
    finetune = by_stage["finetune"][0]
    assert len(client.get_metric_history(finetune.info.run_id, "val_accuracy")) == 2  # per epoch
    assert finetune.data.params["finetune.epochs"] == "2"
    evaluate = {r.data.tags["method"]: r for r in by_stage["evaluate"]}
    assert set(evaluate) == {"baseline", "impactx"}
    assert "aopc_impactx_map" in evaluate["impactx"].data.metrics
    artifacts = {a.path for a in client.list_artifacts(evaluate["impactx"].info.run_id)}
    assert {"morf.png", "explanations.png"} <= artifacts
    for method in ("baseline", "impactx"):
        name = f"digits-lenet5-{method}"
        champ = client.get_model_version_by_alias(name, "champion")
        assert str(champ.version) == "1" and float(champ.tags["test_accuracy"]) == pytest.approx(
            evaluate[method].data.metrics["test_accuracy"], abs=1e-6
        )
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        assert model.metadata.signature is not None
        import numpy as np

        out = model.predict(np.random.rand(2, 3, 32, 32).astype(np.float32))
        assert np.asarray(out).shape == (2, 10)
    impactx = mlflow.pytorch.load_model("models:/digits-lenet5-impactx@champion")
    logits, explanation = impactx.explain(torch.rand(2, 3, 32, 32))  # class and map in one pass
    assert logits.shape == (2, 10) and explanation.shape == (2, 3, 32, 32)


@pytest.mark.e2e
def test_second_repro_is_a_noop(project):
    root, _ = project
    again = run(["dvc", "repro"], root)
    assert "Running stage" not in again.stdout
    assert "didn't change" in again.stdout or "up to date" in again.stdout


@pytest.mark.e2e
def test_bad_params_fail_in_one_line_and_leave_stage_undone(project):
    root, _ = project
    good = (root / "params.yaml").read_text()
    try:
        (root / "params.yaml").write_text(good.replace("epochs: 2", "epochs: two", 1))
        bad = run(["dvc", "repro", "finetune"], root, check=False)
        assert bad.returncode != 0
        assert "error: params.yaml: finetune.epochs: Input should be a valid integer" in bad.stderr
        assert "changed" in run(["dvc", "status", "finetune"], root).stdout
    finally:
        (root / "params.yaml").write_text(good)
    assert "Running stage" not in run(["dvc", "repro"], root).stdout


@pytest.mark.e2e
def test_lambda_experiment_reruns_only_stage_two(project):
    root, _ = project
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "results"], root)
    exp = run(["dvc", "exp", "run", "-S", "impactx.lambda=0.4"], root)
    ran = [s for s in STAGES if f"Running stage '{s}'" in exp.stdout]
    assert ran == ["train_impactx", "evaluate"]
