"""Prefect: the pipeline flow on tiny params, the Dask SHAP fan-out (and a worker killed mid-shard), and
the deployment definitions. The tests that run flows share one temporary Prefect server per session."""

import importlib.util
import json
import os
import subprocess

import mlflow
import numpy as np
import pytest
import torch
import yaml
from conftest import CPU, REPO, md5, run, shap_spec, tiny_model, tiny_project
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint

from impactx import threadprobe
from impactx.fanout import dask_runner, local_cluster_kwargs
from impactx.layout import STAGE_TIMES
from impactx.schedule import load_times
from impactx.shards import compute_maps


def load(entrypoint: str):
    return load_flow_from_entrypoint(str(REPO / entrypoint))


def task_state_names(flow_run_id) -> list[str]:
    """The state name of every task run of a flow run, as the Prefect UI shows them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [r.state.name for r in runs]


def flows_module():
    spec = importlib.util.spec_from_file_location("flows_pipeline", REPO / "flows/pipeline.py")
    flows = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flows)
    return flows


def test_a_flow_run_leaves_params_yaml_as_it_found_it_and_holds_the_checkout(tmp_path):
    import threading

    flows = flows_module()
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    before = (tmp_path / "params.yaml").read_bytes()
    with pytest.raises(RuntimeError), flows.workspace_restored(tmp_path, overrides=False):
        flows.apply_overrides(tmp_path, {"impactx.lambda": 1.4, "methods": ["impactx"]})
        raise RuntimeError("a stage failed")
    assert (tmp_path / "params.yaml").read_bytes() == before
    order = []
    with flows.checkout_lock(tmp_path):
        second = threading.Thread(target=lambda: flows.checkout_lock(tmp_path).__enter__() or order.append("second"))
        second.start()
        second.join(0.5)
        order.append("first done")
    second.join(5)
    assert order == ["first done", "second"]  # the second run waited for the first


def test_overrides_are_written_as_dvc_exp_run_would(tmp_path):
    flows = flows_module()
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    flows.apply_overrides(
        tmp_path,
        {
            "impactx.lambda": 0.4,
            "attribution.shap_partition.masker": "blur(4,4)",
            "data.path": None,
            "mlflow.register_models": False,
        },
    )
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert params["impactx"]["lambda"] == 0.4 and params["attribution"]["shap_partition"]["masker"] == "blur(4,4)"
    assert params["data"]["path"] is None and params["mlflow"]["register_models"] is False
    assert (
        "# post-hoc SHAP of every model" in (tmp_path / "params.yaml").read_text()
    )  # comments survive, as with dvc exp run


def test_a_split_stage_shares_the_threads_and_a_training_stage_keeps_them(monkeypatch):
    flows = flows_module()
    split = {"attribution@0", "evaluate@impactx"}
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert flows.threads_for("attribution@0", split, busy=2, workers=2) == dict.fromkeys(flows.THREAD_VARS, "2")
    assert flows.threads_for("attribution@0", split, busy=1, workers=2) == dict.fromkeys(flows.THREAD_VARS, "4")
    assert flows.threads_for("evaluate@impactx", split, busy=9, workers=3)["OMP_NUM_THREADS"] == "1"
    assert flows.threads_for("train@impactx-0", split, busy=2, workers=2) == {}  # inherits: the same bytes
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert flows.threads_for("attribution@0", split, busy=2, workers=2)["MKL_NUM_THREADS"] == str(
        max(1, (os.cpu_count() or 1) // 2)
    )
    assert flows.split_threads(REPO) >= {"attribution@0", "teacher@0", "evaluate@impactx", "evaluate_baseline@baseline"}
    assert not {s for s in flows.split_threads(REPO) if s.startswith(("baseline", "train"))}  # they train


def test_no_stage_is_split_where_the_machines_forward_passes_depend_on_the_thread_count(monkeypatch, caplog):
    """On an AMD EPYC a Linear of 7 rows gave other last bits at 1 thread than at 2, and a 2-slot run's
    evaluate_baseline@baseline other maps than `dvc repro`'s: the probe's verdict decides, not dvc.yaml alone."""
    flows = flows_module()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    probed = []
    monkeypatch.setattr(threadprobe, "invariant", lambda n, backbone, cwd=None: probed.append((n, backbone)) or False)
    with caplog.at_level("INFO"):
        assert flows.splittable(REPO, None) == set()
    assert probed == [(2, "lenet5")] and "every stage keeps 2 threads" in caplog.text
    monkeypatch.setattr(threadprobe, "invariant", lambda n, backbone, cwd=None: True)
    assert flows.splittable(REPO, None) == flows.split_threads(REPO)
    assert flows.splittable(REPO, ["0", "1"]) == set()  # a GPU slot owns its device: nothing to split


def test_the_thread_probe_compares_one_thread_with_the_sequential_count(monkeypatch):
    seen = []

    def fake_run(cmd, env, **kw):
        seen.append(env["OMP_NUM_THREADS"] + env["MKL_NUM_THREADS"] + env["OPENBLAS_NUM_THREADS"])
        return subprocess.CompletedProcess(cmd, 0, stdout=f"digest-{env['OMP_NUM_THREADS']}\n")

    assert threadprobe.invariant(1) and seen == []  # one thread: nothing to compare
    monkeypatch.setattr(threadprobe.subprocess, "run", fake_run)
    assert not threadprobe.invariant(4) and seen == ["111", "444"]
    monkeypatch.setattr(
        threadprobe.subprocess, "run", lambda cmd, env, **kw: subprocess.CompletedProcess(cmd, 0, "same")
    )
    assert threadprobe.invariant(4)
    assert threadprobe.digest() == threadprobe.digest()  # in one process: deterministic


def test_a_lost_remote_is_one_line_that_names_dvcs_error_and_the_fix(monkeypatch, tmp_path):
    """DVC 3.67 prints its errors, then a support footer that the message used to end with (exit 255)."""
    flows = flows_module()
    said = (
        "ERROR: failed to transfer '.dvc/cache/runs/a3/a35d' - [Errno 2] No such file or directory: '/gone'\n"
        "ERROR: unexpected error - [Errno 2] No such file or directory: '/gone'\n\n"
        "Having any troubles? Hit us up at https://dvc.org/support, we are always happy to help!\n"
    )
    done = subprocess.CompletedProcess([], 255, stdout="", stderr=said)
    monkeypatch.setattr(flows.subprocess, "run", lambda *a, **k: done)
    with pytest.raises(flows.StageFailed) as failed:
        flows.push(tmp_path)
    message = str(failed.value)
    assert "ERROR: unexpected error - [Errno 2] No such file or directory: '/gone'" in message
    assert "dvc remote list" in message and "troubles" not in message and "\n" not in message


def test_a_failed_stage_stops_its_descendants_only(monkeypatch, tmp_path):
    """fan_out's scheduling with the stages faked: train@0 crashes; evaluate@0 and compare (which read it)
    never start, every other stage runs, then the crash is raised."""
    flows = flows_module()
    ups = {"check_params": [], "fetch": [], "train@0": ["fetch"], "train@1": ["fetch"], "evaluate@0": ["train@0"],
           "evaluate@1": ["train@1"], "compare": ["evaluate@0", "evaluate@1"]}  # fmt: skip
    started = []

    class Finished:  # a finished task's future, as fan_out reads it
        def __init__(self, stage):
            self.task_run_id = stage
            self.outcome = flows.StageFailed("train@0 died") if stage == "train@0" else ("ran", 1.0)

        def result(self, raise_on_failure=True):
            return self.outcome

    class Stage:  # dvc_stage.submit: a stage in a slot
        def submit(self, stage, root, env, upstream, pull):
            started.append(stage)
            return Finished(stage)

    monkeypatch.setattr(flows, "dag", lambda repo: (ups, set(ups) - {"check_params"}))
    monkeypatch.setattr(
        flows, "open_slots", lambda repo, n, gpus: [flows.Slot(tmp_path / f"s{i}", {}, True) for i in range(n)]
    )
    for name in ("close_slot", "sync", "give_lock"):
        monkeypatch.setattr(flows, name, lambda *a: None)
    batches = []  # what the checkout took in, batch by batch
    monkeypatch.setattr(flows, "restore", lambda repo, stages: batches.append(stages) if stages else None)
    monkeypatch.setattr(flows, "read_lock", lambda root: {s: {"cmd": s} for s in ups})
    monkeypatch.setattr(flows, "dvc_stage", Stage())
    monkeypatch.setattr(flows, "splittable", lambda repo, gpus: {"evaluate@0", "evaluate@1"})
    monkeypatch.setattr(flows, "in_checkout", lambda stage, repo, pull: started.append(stage) or ("ran", 0.5))
    monkeypatch.setattr(flows, "as_completed", iter)
    timed: dict = {}
    with pytest.raises(flows.StageFailed, match="train@0 died"):
        flows.fan_out(tmp_path, 2, timed=timed)
    assert set(started) == set(ups) - {"evaluate@0", "compare"}
    assert set(timed) == {"check_params", "fetch", "train@1", "evaluate@1"}  # finished and taken into the checkout
    assert batches == [["fetch", "train@1", "evaluate@1"]]  # one batch at the end, in the DAG's order


@pytest.mark.e2e
def test_flow_runs_the_dag_as_a_dvc_experiment(tmp_path, prefect_server):
    root = tiny_project(tmp_path, seeds=[0], methods=["impactx"], controls=[])
    pipeline = load("flows/pipeline.py:pipeline")

    committed = (root / "params.yaml").read_bytes()
    state = pipeline(overrides={"impactx.lambda": 0.4}, experiment="tiny", root=str(root), return_state=True)
    assert state.is_completed(), state.message
    assert set(state.result().values()) == {"ran"}
    assert (root / "params.yaml").read_bytes() == committed  # the next run starts from params.yaml as committed
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root).stdout)
    assert '"lambda": 0.4' in json.dumps(shown)  # the override lives in the saved experiment
    assert "tiny" in run(["dvc", "exp", "list", "--name-only"], root).stdout
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("impactx").experiment_id])
    tagged = [r for r in runs if r.data.tags.get("prefect_flow_run_id") == str(state.state_details.flow_run_id)]
    stages = ["check_params", "fetch_data", "baseline@0", "attribution@0", "teacher@0", "train@impactx-0", "evaluate@impactx",
              "evaluate_baseline@baseline", "compare"]  # fmt: skip
    assert list(state.result()) == stages  # dvc.yaml's order, foreach/matrix expanded
    assert {r.data.tags["dvc_stage"] for r in tagged} == set(stages) - {"teacher@0", "check_params"}  # no MLflow run

    again = pipeline(overrides={"impactx.lambda": 0.4}, root=str(root), experiment="tiny-again", return_state=True)
    assert set(again.result().values()) == {"skipped"}  # DVC's cache decides: nothing runs
    assert set(task_state_names(again.state_details.flow_run_id)) == {"Cached"}  # and the UI says so

    bad = pipeline(overrides={"baseline.epochs": "ten"}, root=str(root), return_state=True)
    assert bad.is_failed() and (root / "params.yaml").read_bytes() == committed
    error = bad.result(raise_on_failure=False)
    assert "error: params.yaml: baseline.epochs: Input should be a valid integer" in str(error)
    assert type(error).__name__ == "BadInput"  # not retried: the same input fails the same way

    # with params.yaml as committed, then with an override: the workspace ends as the first run left it
    assert pipeline(root=str(root), experiment="tiny-base")["train@impactx-0"] == "ran"  # λ as committed
    status, table = run(["dvc", "status", "--json"], root).stdout, (root / "metrics/comparison.json").read_bytes()
    assert json.loads(status) == {}
    result = pipeline(overrides={"impactx.lambda": 0.4}, root=str(root), experiment="tiny-04")  # the run cache's
    assert {s for s, r in result.items() if r == "ran"} <= {"check_params", "compare"}  # none the run cache has
    assert json.loads(run(["dvc", "status", "--json"], root).stdout) == {}  # outputs and dvc.lock given back
    assert (root / "metrics/comparison.json").read_bytes() == table and (root / "params.yaml").read_bytes() == committed
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root).stdout)
    saved = {x["revs"][0]["name"]: x["revs"][0]["data"] for b in shown for x in b["experiments"] or []}
    metrics = lambda exp: json.dumps(saved[exp]["metrics"])  # noqa: E731
    assert "headline.json" in metrics("tiny-04") and metrics("tiny-04") != metrics("tiny-base")  # its own table


@pytest.mark.e2e
def test_two_worker_slots_end_with_the_outputs_and_lock_of_a_sequential_repro(
    tmp_path, prefect_server, mlflow_server, monkeypatch, capsys
):
    """...and every stage's MLflow run lands in one tracking server, whichever slot ran it. A stage marked
    `threads: split` runs with half the threads when another is ready beside it, and its bytes are the same."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # what a sequential stage gets, whatever the cores
        monkeypatch.setenv(var, "2")  # (conftest gives xdist workers 1)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # two pytest workers: idle OpenMP threads sleep
    kw = {"seeds": [0], "methods": ["impactx"], "controls": []}
    sequential, fanned = tiny_project(tmp_path / "seq", **kw), tiny_project(tmp_path / "par", **kw)
    run(["dvc", "repro"], sequential)
    uri, _, artifacts = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the fanned run's stages: the server, not params.yaml's sqlite
    flows, pipeline = flows_module(), load("flows/pipeline.py:pipeline")
    ups, cacheable = flows.dag(fanned)
    assert list(ups) == flows.stages(fanned) and ups["attribution@0"] == ["baseline@0", "fetch_data"]
    assert {"check_params", "compare"} == set(ups) - cacheable  # nothing the run cache restores: in the checkout

    state = pipeline(root=str(fanned), workers=2, experiment="fan", return_state=True)
    assert state.is_completed(), state.message
    assert set(state.result().values()) == {"ran"} and set(state.result()) == set(ups)
    lock = lambda root: yaml.safe_load((root / "dvc.lock").read_text())["stages"]  # noqa: E731
    assert lock(fanned) == lock(sequential)  # every dep, param and output hash
    assert list(lock(fanned)) == list(lock(sequential))  # taken in batches in the DAG's order: the same order
    for entry in lock(sequential).values():
        for out in entry.get("outs", []):
            if (sequential / out["path"]).is_file():
                assert md5(fanned / out["path"]) == md5(sequential / out["path"]), out["path"]
    assert not list(tmp_path.glob(".par-slot*"))  # the worktrees are gone
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("impactx").experiment_id])
    threads = {r.data.tags.get("dvc_stage"): r.data.tags.get("impactx.torch_threads") for r in runs}
    assert {"baseline@0", "attribution@0", "train@impactx-0", "compare"} <= set(threads)
    split = "1" if threadprobe.invariant(2) else "2"  # this CPU's forward passes: the same bytes at 1 and 2 threads?
    assert threads["attribution@0"] == split  # beside teacher@0: split if so; the bytes equal the 2-thread run's
    assert threads["train@impactx-0"] == threads["baseline@0"] == "2"  # training keeps the sequential threads
    assert not (fanned / "mlflow.db").exists() and not (fanned / "mlartifacts").exists()
    assert list(artifacts.rglob("MLmodel"))  # the models went to the server's artifact store

    times = load_times(fanned / STAGE_TIMES)  # every stage's seconds, and its restore into the checkout
    assert set(times) == set(ups) and all(times[s].restore > 0 for s in cacheable)
    assert flows.predict(fanned) == 0 and "critical path" in capsys.readouterr().out
    assert set(pipeline(root=str(fanned), workers=2, experiment="fan-again").values()) == {"skipped"}
    assert load_times(fanned / STAGE_TIMES) == times  # a skipped stage keeps the time it took when it ran


@pytest.mark.e2e
def test_results_travel_through_the_dvc_remote_and_a_second_clone_computes_nothing(tmp_path, prefect_server):
    first = tiny_project(tmp_path / "first", seeds=[0], methods=["impactx"], controls=[])
    pipeline = load("flows/pipeline.py:pipeline")
    state = pipeline(root=str(first), remote=True, experiment="first", return_state=True)  # runs, then pushes
    assert state.is_completed(), state.message
    assert set(state.result().values()) == {"ran"}
    remote = tmp_path / "impactx-dvc-remote"  # the default remote: a folder beside the checkout
    assert list((remote / "files").rglob("*")) and list((remote / "runs").rglob("*"))
    run(["git", "add", "dvc.lock", "metrics", "plots"], first)  # as DVC asks: the lock, and the outputs git keeps
    run(["git", "commit", "-qm", "results"], first)

    second = tmp_path / "second"  # another machine with the commit: DVC's own commands
    run(["git", "clone", "-q", str(first), str(second)], tmp_path)
    run(["dvc", "pull"], second)
    repro = run(["dvc", "repro"], second).stdout
    assert "Running stage" not in repro and "Data and pipelines are up to date" in repro  # nothing computed
    assert md5(second / "metrics/comparison.json") == md5(first / "metrics/comparison.json")

    third = tmp_path / "third"  # a worker without the results commit: the remote's run cache restores every stage
    run(["git", "clone", "-q", str(first), str(third)], tmp_path)
    run(["git", "checkout", "-q", "HEAD~1"], third)
    assert not (third / "dvc.lock").exists()
    done = pipeline(root=str(third), remote=True, experiment="third")
    # check_params writes nothing to restore; compare's outputs are git's (cache: false), which the remote's
    # run cache does not hold: both run again (seconds); every other stage is restored from the remote
    assert {s for s, r in done.items() if r == "ran"} == {"check_params", "compare"}
    assert md5(third / "metrics/comparison.json") == md5(first / "metrics/comparison.json")


class DiesOnce(torch.nn.Module):
    """The first forward pass in any process kills that process (a Dask worker dying mid-shard)."""

    def __init__(self, inner, marker):
        super().__init__()
        self.inner, self.marker = inner, str(marker)

    def forward(self, x):
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
            os._exit(1)
        except FileExistsError:
            return self.inner(x)


def test_dask_fanout_equals_single_process_even_when_a_worker_dies(tmp_path, prefect_server):
    model = tiny_model()
    x = np.random.default_rng(0).integers(0, 256, (6, 3, 16, 16), dtype=np.uint8)
    y = np.array([0, 1, 2, 3, 0, 1])
    kw = dict(spec=shap_spec(), shard_size=2, seed=0, device=CPU)
    single, _ = compute_maps(model, x, y, work_root=tmp_path / "single", **kw)

    fanned, _ = compute_maps(model, x, y, work_root=tmp_path / "dask", runner=dask_runner(workers=2), **kw)
    assert fanned.tobytes() == single.tobytes()

    marker = tmp_path / "a-worker-died"
    killed, work = compute_maps(
        DiesOnce(model, marker), x, y, work_root=tmp_path / "killed", runner=dask_runner(workers=2), **kw
    )
    assert marker.exists()  # a worker process really died in the middle of a shard
    assert killed.tobytes() == single.tobytes()
    assert sorted(p.name for p in work.glob("shard_*")) == [f"shard_{i:05d}.npy" for i in range(3)]


def test_dask_fanout_reaches_a_tls_scheduler_with_the_client_certificates(tmp_path, prefect_server):
    from distributed import LocalCluster
    from distributed.security import Security

    from impactx import ImpactXError
    from impactx.config import DaskTLS
    from impactx.params import parse_params

    sec = Security.temporary()  # a self-signed CA and one certificate, as PEM text: written out as files
    files = {}
    for key, pem in (("ca_file", sec.tls_ca_file), ("cert", sec.tls_client_cert), ("key", sec.tls_client_key)):
        files[key] = str(tmp_path / f"{key}.pem")
        (tmp_path / f"{key}.pem").write_text(pem)
    model = tiny_model()
    x = np.random.default_rng(1).integers(0, 256, (4, 3, 16, 16), dtype=np.uint8)
    y = np.array([0, 1, 2, 3])
    kw = dict(spec=shap_spec(), shard_size=2, seed=0, device=CPU)
    single, _ = compute_maps(model, x, y, work_root=tmp_path / "single", **kw)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls", host="127.0.0.1",
                      security=sec, dashboard_address=None) as cluster:  # fmt: skip
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        runner = dask_runner(address, tls=DaskTLS(**files))
        fanned, _ = compute_maps(model, x, y, work_root=tmp_path / "tls", runner=runner, **kw)
    assert fanned.tobytes() == single.tobytes()

    section = {"executor": "dask", "dask_address": address}  # params.yaml: a tls:// address needs the files
    with pytest.raises(ImpactXError, match=r"^params.yaml: shards: dask_address is tls://: set shards.dask_tls"):
        parse_params({"shards": section})
    with pytest.raises(ImpactXError, match="give the scheduler's tls:// address"):
        parse_params({"shards": {"dask_address": "tcp://10.0.0.2:8786", "dask_tls": files}})
    with pytest.raises(ImpactXError, match=r"^shards.dask_tls.cert: .*nope.pem not found"):
        dask_runner(address, tls=DaskTLS(**{**files, "cert": str(tmp_path / "nope.pem")}))


def test_deployments_load_and_validate():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"nightly", "lambda-sweep"}
    for d in deployments.values():
        assert d["work_pool"]["name"] == "impactx-gpu"
        assert "CUDA_VISIBLE_DEVICES" in d["work_pool"]["job_variables"]["env"]
        flow = load(d["entrypoint"])
        flow.validate_parameters(d["parameters"])  # raises on an unknown or ill-typed parameter
    nightly = deployments["nightly"]["schedules"][0]
    CronSchedule(cron=nightly["cron"], timezone=nightly["timezone"])  # raises on a bad cron or zone
    assert nightly["cron"] == "0 2 * * *"
    sweep = deployments["lambda-sweep"]["parameters"]
    assert all(0.2 <= lam <= 1.4 for lam in sweep["lambdas"]) and len(sweep["seeds"]) == 3
    json.dumps(sweep)  # parameters travel as JSON


@pytest.mark.e2e
def test_the_nightly_schedule_creates_scheduled_runs_on_a_server(prefect_server):
    """The nightly deployment's cron, applied to a server, gives it scheduled flow runs: the insert the
    server's scheduler makes every minute (prefect 3.8.8 with SQLAlchemy 2.1 raised "Can't evaluate bulk
    DML statement" there, and the cron created nothing)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    nightly = next(
        d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"] if d["name"] == "nightly"
    )
    cron = CronSchedule(**nightly["schedules"][0])
    deployment = load(nightly["entrypoint"]).to_deployment(name="nightly-schedule-test", schedule=cron)
    deployment_id = deployment.apply()
    with get_client(sync_client=True) as client:
        answer = client.request("POST", "/deployments/{id}/schedule", path_params={"id": deployment_id}, json={})
        assert answer.status_code < 300, answer.text
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    assert runs and {r.state.name for r in runs} == {"Scheduled"}
    assert all(r.expected_start_time.hour == 2 and r.expected_start_time.minute == 0 for r in runs)  # 02:00 UTC


def test_the_local_dask_cluster_listens_on_loopback_only():
    kw = local_cluster_kwargs(2)
    assert kw["host"] == "127.0.0.1" and kw["dashboard_address"].startswith("127.0.0.1:")
    assert "resources" not in kw and local_cluster_kwargs(2, 1.0)["resources"] == {"GPU": 1}
