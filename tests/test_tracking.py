import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from impactx import tracking
from impactx.backbones import build_backbone
from impactx.config import parse_params
from impactx.model import Classifier


@pytest.fixture
def local_mlflow(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = parse_params({"mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}})
    tracking.setup(params)
    return params


def register(params, score: float):
    model = Classifier(build_backbone("lenet5", 3, 2, 16), [0.5] * 3, [0.25] * 3)
    model.score = score  # what the scorer below reads: stands in for accuracy on the held-out split
    with tracking.stage_run("evaluate", params, run_name="baseline"):
        info = tracking.log_model(model, torch.rand(1, 3, 16, 16), "toy-lenet5-baseline")
    return str(info.registered_model_version)


def test_champion_moves_only_to_a_better_model(local_mlflow):
    score = lambda m: m.score
    client = MlflowClient()
    v1 = register(local_mlflow, 0.5)
    assert tracking.promote_if_better("toy-lenet5-baseline", v1, 0.5, score, "split")
    v2 = register(local_mlflow, 0.4)
    assert not tracking.promote_if_better("toy-lenet5-baseline", v2, 0.4, score, "split")
    assert str(client.get_model_version_by_alias("toy-lenet5-baseline", "champion").version) == v1
    v3 = register(local_mlflow, 0.7)
    assert tracking.promote_if_better("toy-lenet5-baseline", v3, 0.7, score, "split")
    assert str(client.get_model_version_by_alias("toy-lenet5-baseline", "champion").version) == v3


def test_stage_runs_share_one_parent_per_configuration(local_mlflow):
    with tracking.stage_run("finetune", local_mlflow) as a:
        pass
    with tracking.stage_run("shap", local_mlflow) as b:
        pass
    other = local_mlflow.model_copy(update={"seed": 1})
    with tracking.stage_run("finetune", other) as c:
        pass
    parent = lambda r: mlflow.get_run(r.info.run_id).data.tags["mlflow.parentRunId"]
    assert parent(a) == parent(b) != parent(c)
    assert mlflow.get_run(a.info.run_id).data.tags["dvc_stage"] == "finetune"


def test_a_queued_experiments_workspace_logs_into_the_projects_store(tmp_path):
    project = tmp_path / "project"
    workspace = project / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    workspace.mkdir(parents=True)
    assert tracking.project_root(workspace) == project.resolve()
    assert tracking.project_root(project) == project.resolve()
    assert tracking.tracking_uri("sqlite:///mlflow.db", workspace) == f"sqlite:///{project.resolve()}/mlflow.db"
    assert tracking.tracking_uri("sqlite:////srv/mlflow.db", workspace) == "sqlite:////srv/mlflow.db"
    assert tracking.tracking_uri("http://127.0.0.1:5000", workspace) == "http://127.0.0.1:5000"
