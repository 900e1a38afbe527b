import os
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from conftest import tiny_info
from mlflow.tracking import MlflowClient

from impactx import methods, tracking
from impactx.methods import Stage1
from impactx.params import parse_params

INFO = tiny_info(classes=2, size=16)


@pytest.fixture
def local_mlflow(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = parse_params({"mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}})
    tracking.setup(params)
    return params


def register(params, score: float, checkpoint: bool = True, tags: dict | None = None):
    """A registered version whose weights-only checkpoint (here: its validation score as text, read by
    `scored`) is logged beside it, as the evaluate stage logs one; checkpoint=False: none."""
    weights = Path(params.mlflow.tracking_uri.removeprefix("sqlite:///")).with_name(f"baseline-{score}.pt")
    methods.save(weights, "baseline", params.baseline, methods.build("baseline", Stage1(INFO, params.model), params))
    with tracking.stage_run("evaluate", params, run_name="baseline"):
        if checkpoint:
            ckpt = weights.with_name(f"seed0-{score}.pt")
            ckpt.write_text(str(score))
            mlflow.log_artifact(str(ckpt), artifact_path=tracking.CHECKPOINT_DIR)
        info = tracking.log_model(weights, INFO, params.model, np.random.rand(1, 3, 16, 16), "toy-lenet5-baseline")
    for k, v in (tags or {}).items():
        MlflowClient().set_model_version_tag("toy-lenet5-baseline", info.registered_model_version, k, v)
    return str(info.registered_model_version)


def scored(path: Path, wait: float = 0.0) -> float:
    time.sleep(wait)
    return float(path.read_text())


def champion(name="toy-lenet5-baseline"):
    return str(MlflowClient().get_model_version_by_alias(name, "champion").version)


def test_champion_moves_only_to_a_better_model(local_mlflow):
    v1 = register(local_mlflow, 0.5)
    assert tracking.promote_if_better("toy-lenet5-baseline", v1, 0.5, scored, "split")
    v2 = register(local_mlflow, 0.4)
    assert not tracking.promote_if_better("toy-lenet5-baseline", v2, 0.4, scored, "split")
    assert champion() == v1
    v3 = register(local_mlflow, 0.7)
    assert tracking.promote_if_better("toy-lenet5-baseline", v3, 0.7, scored, "split")
    assert champion() == v3


def test_the_champion_is_scored_from_its_checkpoint_not_taken_at_its_tags_word(local_mlflow):
    """A forged champion tagged with the real split and val_accuracy 1.0 whose weights score 0.2 loses."""
    forged = register(local_mlflow, 0.2, tags={"split_id": "split", "val_accuracy": "1.000000"})
    MlflowClient().set_registered_model_alias("toy-lenet5-baseline", "champion", forged)
    v = register(local_mlflow, 0.5)
    assert tracking.promote_if_better("toy-lenet5-baseline", v, 0.5, scored, "split") and champion() == v
    bare = register(local_mlflow, 0.9, checkpoint=False)  # nothing to score: replaced, whatever its tags
    MlflowClient().set_registered_model_alias("toy-lenet5-baseline", "champion", bare)
    v = register(local_mlflow, 0.3)
    assert tracking.promote_if_better("toy-lenet5-baseline", v, 0.3, scored, "split") and champion() == v


def test_two_evaluations_at_once_cannot_both_beat_the_same_champion(local_mlflow):
    """v2 (0.6, scored slowly) and v3 (0.7) promoted at once against v1 (0.5): without the lock both beat
    v1 and the slower one, the worse, was left champion; with it v3 is compared with v2 and wins."""
    v1, v2, v3 = (register(local_mlflow, s) for s in (0.5, 0.6, 0.7))
    assert tracking.promote_if_better("toy-lenet5-baseline", v1, 0.5, scored, "split")
    uri, won = mlflow.get_tracking_uri(), {}

    def promote(v, score, wait):
        mlflow.set_tracking_uri(uri)
        won[v] = tracking.promote_if_better("toy-lenet5-baseline", v, score, lambda p: scored(p, wait), "split")

    slow = threading.Thread(target=promote, args=(v2, 0.6, 1.5))
    slow.start()
    time.sleep(0.5)
    promote(v3, 0.7, 0.0)
    slow.join()
    assert won == {v2: True, v3: True} and champion() == v3


class RunsCodeWhenUnpickled(torch.nn.Module):
    def __init__(self, marker):
        super().__init__()
        self.marker = str(marker)

    def forward(self, x):
        return x.flatten(1)[:, :2]

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_champion_is_never_unpickled_and_is_replaced(local_mlflow, tmp_path):
    marker = tmp_path / "pwned"
    with tracking.stage_run("evaluate", local_mlflow, run_name="evil"):
        info = mlflow.pytorch.log_model(RunsCodeWhenUnpickled(marker), name="model", serialization_format="pickle",
                                        registered_model_name="toy-lenet5-baseline", pip_requirements=["torch"])  # fmt: skip
    evil = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias("toy-lenet5-baseline", "champion", evil)
    v = register(local_mlflow, 0.3)
    assert tracking.promote_if_better("toy-lenet5-baseline", v, 0.3, scored, "split")
    assert champion() == v and not marker.exists()


def test_stage_runs_share_one_parent_per_configuration(local_mlflow):
    with tracking.stage_run("baseline", local_mlflow) as a:
        pass
    with tracking.stage_run("attribution", local_mlflow) as b:
        pass
    other = local_mlflow.model_copy(update={"seed": 1})
    with tracking.stage_run("baseline", other) as c:
        pass
    parent = lambda r: mlflow.get_run(r.info.run_id).data.tags["mlflow.parentRunId"]
    assert parent(a) == parent(b) != parent(c)
    assert mlflow.get_run(a.info.run_id).data.tags["dvc_stage"] == "baseline"


def test_a_stage_run_logs_the_machines_system_metrics(local_mlflow, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    with tracking.stage_run("baseline", local_mlflow) as run:
        time.sleep(1.5)
    metrics = mlflow.get_run(run.info.run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)


def test_a_queued_experiments_workspace_logs_into_the_projects_store(tmp_path):
    project = tmp_path / "project"
    workspace = project / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    workspace.mkdir(parents=True)
    assert tracking.project_root(workspace) == project.resolve()
    assert tracking.project_root(project) == project.resolve()
    assert tracking.tracking_uri("sqlite:///mlflow.db", workspace) == f"sqlite:///{project.resolve()}/mlflow.db"
    assert tracking.tracking_uri("sqlite:////srv/mlflow.db", workspace) == "sqlite:////srv/mlflow.db"
    assert tracking.tracking_uri("http://127.0.0.1:5000", workspace) == "http://127.0.0.1:5000"


def test_a_moved_project_reads_and_writes_its_own_artifacts_not_the_old_paths(tmp_path, monkeypatch):
    import shutil

    first, moved = tmp_path / "first", tmp_path / "moved"
    first.mkdir()
    monkeypatch.chdir(first)
    params = parse_params({})  # the default store: sqlite:///mlflow.db, the project's own file
    version = register(params, 0.5)
    assert mlflow.get_experiment_by_name("impactx").artifact_location == (first / "mlartifacts").as_uri()
    shutil.move(first, moved)  # `mv` of the whole project, its store and artifacts with it
    monkeypatch.chdir(moved)

    experiment_id = tracking.setup(params)
    new_root = (moved / "mlartifacts").as_uri()
    assert mlflow.get_experiment(experiment_id).artifact_location == new_root
    runs = MlflowClient().search_runs([experiment_id])
    assert runs and all(r.info.artifact_uri.startswith(new_root + "/") for r in runs)
    served = mlflow.pyfunc.load_model(f"models:/toy-lenet5-baseline/{version}")  # read from the new place
    assert served.predict(np.random.rand(1, 3, 16, 16).astype(np.float32)).shape[0] == 1
    with tracking.stage_run("evaluate", params) as run:
        mlflow.log_text("written after the move", "note.txt")
    assert mlflow.get_run(run.info.run_id).info.artifact_uri.startswith(new_root + "/")
    assert not first.exists()  # nothing was written to where the project used to be
    assert tracking.setup(params) == experiment_id  # and the next stage finds nothing left to move


STAGE_THAT_HANGS = """
import sys, time
from impactx import tracking
from impactx.params import parse_params
params = parse_params({"mlflow": {"tracking_uri": sys.argv[1]}})
with tracking.stage_run("train@impactx-0", params):
    print("started", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL", "SIGKILL, its watchdog too"])
def test_a_killed_stage_leaves_no_run_running(tmp_path, sig):
    """SIGTERM ends the run as KILLED at once; after SIGKILL the stage's watchdog does; when the watchdog
    is killed as well, the next stage run does."""
    import signal
    import subprocess
    import sys
    import time

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    params = parse_params({"mlflow": {"tracking_uri": uri}})
    tracking.setup(params)
    script = tmp_path / "stage.py"
    script.write_text(STAGE_THAT_HANGS)
    p = subprocess.Popen([sys.executable, str(script), uri], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "started"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(params.mlflow.experiment).experiment_id
    child = [r for r in client.search_runs([exp]) if r.data.tags.get("dvc_stage") == "train@impactx-0"]
    assert len(child) == 1
    run_id = child[0].info.run_id
    if sig == "SIGKILL, its watchdog too":
        subprocess.run(["pkill", "-9", "-f", f"impactx.watchdog .* {run_id}"], check=True)
    p.send_signal(signal.SIGTERM if sig == "SIGTERM" else signal.SIGKILL)
    p.wait(30)
    if sig == "SIGTERM":
        assert p.returncode == 128 + signal.SIGTERM and client.get_run(run_id).info.status == "KILLED"
        return
    if sig == "SIGKILL":  # nothing runs in a SIGKILLed process: its watchdog saw the pipe close
        deadline = time.time() + 30
        while client.get_run(run_id).info.status == "RUNNING" and time.time() < deadline:
            time.sleep(0.2)
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and "watchdog" in run.data.tags["impactx.ended_by"]
        return
    assert client.get_run(run_id).info.status == "RUNNING"
    mlflow.set_tracking_uri(uri)
    with tracking.stage_run("train@impactx-0", params):  # the next run of any stage on this machine
        pass
    assert client.get_run(run_id).info.status == "KILLED"
    assert all(r.info.status != "RUNNING" for r in client.search_runs([exp]))


WRITER = """
import sys
from impactx import tracking
from impactx.params import parse_params
params = parse_params({"mlflow": {"tracking_uri": sys.argv[1]}})
for i in range(3):
    with tracking.stage_run(f"stage{sys.argv[2]}-{i}", params):
        pass
"""


def test_writers_starting_together_on_a_new_store_lose_no_run(tmp_path):
    """Six stage processes on a database that does not exist yet: before the store lock, migrations raced
    ("duplicate column name: step", "table ... already exists") and runs were lost."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path}/new.db"
    (tmp_path / "w.py").write_text(WRITER)
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "w.py"), uri, str(i)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(6)]  # fmt: skip
    for p in procs:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out[-2000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("impactx").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(runs) == 19 and len(parents) == 1  # 6 × 3 stage runs, under one parent


def test_a_users_mlflow_tracking_uri_wins_over_params_yaml_but_not_one_mlflow_left_behind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = parse_params({})
    own = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.store_uri(params) == own  # params.yaml's relative sqlite path: this project's file
    assert tracking.use_store(params) == own and os.environ["MLFLOW_TRACKING_URI"] == own  # mlflow copies it
    assert tracking.store_uri(parse_params({"mlflow": {"tracking_uri": "sqlite:///other.db"}})).endswith("other.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")  # a tracking server, set by the user
    assert tracking.store_uri(params) == "http://127.0.0.1:5999"
    assert tracking.local_store(own) and not tracking.local_store("http://127.0.0.1:5999")


def test_ui_addresses_open_the_model_training_pages():
    """MLflow 3.17's UI opened the experiment on its GenAI overview (traces, token usage) although the
    experiment is tagged custom_model_development (seen in headless Chromium): the addresses the project
    prints ask for the runs pages, with the query parameter the installed UI reads."""
    assert tracking.ui_address("sqlite:///mlflow.db", "1", "abc") == (
        "http://127.0.0.1:5000/#/experiments/1/runs/abc?workflowType=machine_learning"
    )
    assert tracking.ui_address("http://127.0.0.1:5055/", "7") == (
        "http://127.0.0.1:5055/#/experiments/7?workflowType=machine_learning"
    )
    bundle = Path(mlflow.__file__).parent / "server/js/build/static/js"
    text = "".join(p.read_text(errors="ignore") for p in bundle.glob("main.*.js"))
    key, value = tracking.UI_PAGES.split("=")
    assert f'"mlflow.{key}"' in text and f'"{value}"' in text  # the parameter and its value, as the UI spells them
