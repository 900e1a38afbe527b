"""Faults a future change must not bring back: kill -9 of each long stage, and of a fanned-out flow with its
worker slots, then a re-run, leaves no partial output (in the checkout or the shared DVC cache), gives
byte-identical results and no RUNNING MLflow run. (The other faults have their
tests beside the code: a malicious champion and writers racing on a new store in test_tracking.py, a
queued experiment's runs in test_pipeline.py, a flow run leaving params.yaml as it was in test_flows.py.)"""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import md5, run, tiny_project

# slow enough to be killed mid-way: six SHAP shards of 16 images at 1000 evaluations, 40 epochs of IMPACTX
SLOW = {"seeds": [0], "methods": ["impactx"], "controls": [],
        "attribution": {"shap_partition": {"max_evals": 1000}}, "shards": {"size": 16}, "impactx": {"epochs": 40, "batch_size": 32, "latent_dim": 64}}  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tiny_project(tmp_path_factory.mktemp("faults"), **SLOW)
    run(["dvc", "repro", "train@impactx-0"], root)
    return root, {p: md5(root / p) for p in ("attribution/seed0/maps.npy", "models/impactx/seed0.pt")}


def kill_when(root: Path, stage: str, ready) -> None:
    """Start `dvc repro -f -s stage`, SIGKILL its whole process group once ready(root, output) is true."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    log = root / f"killed-{stage}.log"
    with open(log, "w") as f:
        p = subprocess.Popen(["dvc", "repro", "-f", "-s", stage], cwd=root, env=env, stdout=f,
                             stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while not ready(root, log.read_text()):
        assert p.poll() is None, f"{stage} finished before it could be killed:\n{log.read_text()[-2000:]}"
        assert time.time() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(30)


def runs_with_status(root: Path, status: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("impactx").experiment_id
    return client.search_runs([exp], f"attributes.status = '{status}'")


def running_runs(root: Path) -> list[str]:
    return [r.data.tags.get("dvc_stage") for r in runs_with_status(root, "RUNNING")]


def killed_runs(root: Path) -> list[str]:
    """The stages whose run its watchdog ended."""
    found = runs_with_status(root, "KILLED")
    return [r.data.tags.get("dvc_stage") for r in found if "watchdog" in r.data.tags.get("impactx.ended_by", "")]


def no_temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp") if ".dvc" not in p.parts and ".git" not in p.parts]


@pytest.mark.e2e
@pytest.mark.parametrize(
    "stage,output,ready",
    [
        (
            "attribution@0",
            "attribution/seed0/maps.npy",
            lambda root, out: len(list(root.glob(".attribution_work/*/shard_*.npy"))) >= 2,
        ),
        ("train@impactx-0", "models/impactx/seed0.pt", lambda root, out: "impactx epoch 2:" in out),
    ],
)
def test_kill_9_then_rerun_gives_the_same_bytes_and_no_running_run(project, stage, output, ready):
    root, first = project
    kill_when(root, stage, ready)
    assert not (root / output).exists() and not no_temp_files(root)  # nothing that looks complete
    deadline = time.time() + 30  # the killed process could not end its run: its watchdog does, at once
    while running_runs(root) and time.time() < deadline:
        time.sleep(0.2)
    assert running_runs(root) == [] and killed_runs(root).count(stage) == 1
    again = run(["dvc", "repro", "-f", "-s", stage], root)  # -f: run it (not DVC's run cache)
    if stage.startswith("attribution"):
        assert "attribution: resuming, " in again.stdout  # only the missing shards are computed
    assert md5(root / output) == first[output]
    assert running_runs(root) == []
    assert "changed" not in run(["dvc", "status", "train@impactx-0"], root).stdout  # downstream unchanged


def cache_is_sound(root: Path) -> list[str]:
    """Files of the DVC cache whose content does not hash to their name (a partial write)."""
    bad = []
    for f in (root / ".dvc/cache/files/md5").rglob("*"):
        if f.is_file() and not f.name.endswith(".dir") and f.parent.name + f.name != md5(f):
            bad.append(str(f))
    return bad


@pytest.mark.e2e
def test_kill_9_of_a_fanned_out_flow_then_a_rerun_gives_a_sequential_repros_bytes(tmp_path, prefect_server):
    """A worker machine dies: the flow and its two slots' stages are SIGKILLed while a slot computes SHAP
    shards. Nothing partial is in the checkout or the shared cache, no MLflow run stays RUNNING, and a
    re-run of the flow ends with the outputs and dvc.lock of a sequential `dvc repro`."""
    from prefect.settings import PREFECT_API_URL

    kw = {k: v for k, v in SLOW.items() if k != "impactx"} | {"impactx": {"epochs": 2}}
    sequential, fanned = tiny_project(tmp_path / "seq", **kw), tiny_project(tmp_path / "par", **kw)
    run(["dvc", "repro"], sequential)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_API_URL": str(PREFECT_API_URL.value())}  # fmt: skip
    log = tmp_path / "flow.log"
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, "flows/pipeline.py", "--workers", "2"], cwd=fanned, env=env,
                             stdout=f, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while len(list(tmp_path.glob(".par-slot*/.attribution_work/*/shard_*.npy"))) < 2:
        assert p.poll() is None, f"the flow ended before it could be killed:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)  # the flow, its slots' dvc and their stages: one process group
    p.wait(30)
    assert not (fanned / "attribution/seed0/maps.npy").exists() and not no_temp_files(fanned)
    assert cache_is_sound(fanned) == []
    deadline = time.time() + 30  # the killed stage could not end its run: its watchdog does
    while running_runs(fanned) and time.time() < deadline:
        time.sleep(0.2)
    assert running_runs(fanned) == []
    again = run([sys.executable, "flows/pipeline.py", "--workers", "2"], fanned, check=False)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    lock = lambda root: yaml.safe_load((root / "dvc.lock").read_text())["stages"]  # noqa: E731
    assert lock(fanned) == lock(sequential)
    for out in ("attribution/seed0/maps.npy", "models/impactx/seed0.pt", "metrics/comparison.json"):
        assert md5(fanned / out) == md5(sequential / out), out
    assert running_runs(fanned) == [] and not list(tmp_path.glob(".par-slot*")) and cache_is_sound(fanned) == []


@pytest.mark.e2e
def test_two_flows_started_at_once_on_one_checkout_run_each_stage_once(tmp_path, prefect_server):
    """Two flow processes on one checkout (a second deployment's run, a user's run beside the nightly one):
    one waits on the checkout's lock while the other runs; then its stages are all DVC-cached. Both end
    with exit 0, each stage has exactly one MLflow run, and the checkout is consistent (`dvc status`
    clean, no slot worktree, a sound cache)."""
    from prefect.settings import PREFECT_API_URL

    root = tiny_project(tmp_path / "both", seeds=[0], methods=["impactx"], controls=[])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_API_URL": str(PREFECT_API_URL.value())}  # fmt: skip
    logs = [tmp_path / f"flow{i}.log" for i in (1, 2)]
    procs = []
    for log, workers in zip(logs, ("2", "1"), strict=True):
        with open(log, "w") as f:
            procs.append(subprocess.Popen([sys.executable, "flows/pipeline.py", "--workers", workers], cwd=root,
                                          env=env, stdout=f, stderr=subprocess.STDOUT))  # fmt: skip
    codes = [p.wait(600) for p in procs]
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n\n".join(t[-3000:] for t in texts)
    waited = [t for t in texts if "another flow run holds" in t]
    assert len(waited) == 1, "exactly one of the two flows waits for the other"
    stages = [line for line in waited[0].splitlines() if "saved as DVC experiment" in line]  # and its results
    assert stages and "'ran'" not in stages[-1] and "'skipped'" in stages[-1]  # the waiter computed nothing
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("impactx").experiment_id], max_results=1000)
    per_stage = Counter(r.data.tags.get("dvc_stage") for r in runs)
    assert per_stage and set(per_stage.values()) == {1}, per_stage  # no stage ran twice
    assert "changed" not in run(["dvc", "status"], root).stdout
    assert not list(tmp_path.glob(".both-slot*")) and cache_is_sound(root) == [] and not no_temp_files(root)
