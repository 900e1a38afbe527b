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


STAGE_THAT_HANGS = """
import sys, time
from impactx import tracking
from impactx.config import parse_params
params = parse_params({"mlflow": {"tracking_uri": sys.argv[1]}})
with tracking.stage_run("train@impactx-0", params):
    print("started", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_a_killed_stage_leaves_no_run_running(tmp_path, sig):
    """SIGTERM ends the run as KILLED at once; after SIGKILL the next stage run ends it as KILLED."""
    import signal
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    params = parse_params({"mlflow": {"tracking_uri": uri}})
    tracking.setup(params)
    script = tmp_path / "stage.py"
    script.write_text(STAGE_THAT_HANGS)
    p = subprocess.Popen([sys.executable, str(script), uri], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "started"
    p.send_signal(getattr(signal, sig))
    p.wait(30)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(params.mlflow.experiment).experiment_id
    child = [r for r in client.search_runs([exp]) if r.data.tags.get("dvc_stage") == "train@impactx-0"]
    assert len(child) == 1
    if sig == "SIGTERM":
        assert p.returncode == 128 + signal.SIGTERM and child[0].info.status == "KILLED"
        return
    assert child[0].info.status == "RUNNING"  # nothing could run in a SIGKILLed process
    mlflow.set_tracking_uri(uri)
    with tracking.stage_run("train@impactx-0", params):  # the next run of any stage on this machine
        pass
    assert client.get_run(child[0].info.run_id).info.status == "KILLED"
    assert all(r.info.status != "RUNNING" for r in client.search_runs([exp]))
