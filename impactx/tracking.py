"""MLflow: one parent run per pipeline configuration, one child run per DVC stage, models in the registry.

Runs of one `dvc repro` share a parent run keyed by the hash of params.yaml (minus the mlflow section),
so the UI shows a configuration's stages together, and the evaluate runs of every method and seed side
by side with the same metric names (test_accuracy, val_accuracy, aopc, aopc_random). Every run carries
the DVC stage, git revision, dataset and backbone as tags, and method and seed where it has them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import signal
import socket
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # runs stay on this machine unless you opt in

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from impactx import ImpactXError, methods
from impactx.config import Params
from impactx.data import to_float
from impactx.io import exclusive_lock
from impactx.train import accuracy

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHECKPOINT_DIR = "checkpoint"  # the evaluate run's artifact folder for the weights-only checkpoint
HOST_TAG, PID_TAG = "impactx.host", "impactx.pid"  # which process a stage run belongs to (end_orphans)
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}  # the experiment's kind, for MLflow
# MLflow 3.17's UI opens every experiment on its GenAI pages (traces, token usage) whatever its kind, unless the
# address asks for the model-training pages (its runs table): every address this project prints does
UI_PAGES = "workflowType=machine_learning"
UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
CHECKSUM_TAG = "checkpoint_md5"  # a registry version's weights-only checkpoint: one version per checkpoint
THREADS_TAG = "impactx.torch_threads"  # torch's CPU threads in the stage: float sums can depend on them
FLOW_RUN_ENV = "IMPACTX_PREFECT_FLOW_RUN_ID"  # set by flows/pipeline.py for the stages it runs
PROJECT_ENV = "IMPACTX_PROJECT"  # set by flows/pipeline.py for a stage it runs in a worker slot's worktree


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def pipeline_key(params: Params) -> str:
    cfg = params.model_dump(by_alias=True, exclude={"mlflow"})
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def flatten(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def project_root(cwd: str | Path | None = None) -> Path:
    """The user's project: $IMPACTX_PROJECT (a fan-out flow's worktree slot runs a stage for it), the working
    directory or, inside the temporary workspace where DVC runs a queued experiment
    (<project>/.dvc/tmp/exps/<tmp>/), the project it was queued from."""
    if os.environ.get(PROJECT_ENV):
        return Path(os.environ[PROJECT_ENV]).resolve()
    here = Path(cwd or os.getcwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 3, 0, -1):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return here


def tracking_uri(uri: str, cwd: str | Path | None = None) -> str:
    """A relative sqlite path is the project's file, wherever the stage runs: queued experiments log
    into the user's store, not into a temporary copy that DVC deletes afterwards."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix) :]).is_absolute():
        return prefix + str(project_root(cwd) / uri[len(prefix) :])
    return uri


_SET_HERE: set[str] = set()  # URIs this process gave mlflow.set_tracking_uri, which copies them to the env


def _user_uri() -> str | None:
    """$MLFLOW_TRACKING_URI as the user set it, not as an earlier setup() in this process left it."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env and env not in _SET_HERE else None


def store_uri(params: Params) -> str:
    """The MLflow store the stages log to: $MLFLOW_TRACKING_URI when set (a tracking server that the
    workers of several machines share; docs: Orchestration), else params.yaml's mlflow.tracking_uri."""
    return tracking_uri(_user_uri() or params.mlflow.tracking_uri)


def use_store(params: Params) -> str:
    """Point MLflow at store_uri(params) and return it."""
    uri = store_uri(params)
    mlflow.set_tracking_uri(uri)
    _SET_HERE.add(uri)
    return uri


def local_store(uri: str) -> bool:
    """A store on this machine's disk (sqlite, a folder), whose artifacts go to the project's mlartifacts/;
    a tracking server (http[s]://) keeps them where its --artifacts-destination says."""
    return not uri.startswith(("http://", "https://", "databricks"))


@contextlib.contextmanager
def store_lock(uri: str):
    """One process at a time creates or migrates a sqlite store's tables and creates experiments and
    parent runs (an exclusive lock on <db>.lock; for a server, on one in the project's .dvc/tmp, which the
    worker slots of one machine share). Without it, stages starting together on a new database lost runs
    to migration races ("duplicate column name: step") and made two parent runs."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = Path(uri[len(prefix) :] + ".lock")
    elif not local_store(uri):
        path = project_root() / ".dvc" / "tmp" / "impactx-mlflow.lock"
    else:
        yield
        return
    with exclusive_lock(path):
        yield


# Where MLflow's sqlite schema keeps absolute artifact locations (MLflow has no API to change them)
ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
)


def ui_address(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """A run's (or its experiment's) address in the MLflow UI, on its model-training pages: on the tracking
    server itself, else where `mlflow ui --backend-store-uri <tracking_uri>` serves it."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else UI_DEFAULT
    return f"{base}/#/experiments/{experiment_id}{f'/runs/{run_id}' if run_id else ''}?{UI_PAGES}"


def ui_hint(run) -> str:
    """How to open `run` in the MLflow UI: the command (a file store) and the address."""
    uri = mlflow.get_tracking_uri()
    where = ui_address(uri, run.info.experiment_id, run.info.run_id)
    return where if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}, then {where}"


def setup(params: Params) -> str:
    """Point MLflow at the store (store_uri) and return the experiment id (artifacts go to the project's
    mlartifacts/, or the tracking server's artifact store). A project whose own store (a relative sqlite
    path) moved or was copied with it gets its artifact locations pointed at this project's mlartifacts/
    (relocate_artifacts)."""
    own = store_uri(params) != (_user_uri() or params.mlflow.tracking_uri)  # a relative sqlite path: the project's
    uri = use_store(params)
    artifacts = (project_root() / "mlartifacts").as_uri() if local_store(uri) else None
    with store_lock(uri):
        MlflowClient()  # opening the store creates or migrates its tables: one process at a time
        exp = mlflow.get_experiment_by_name(params.mlflow.experiment)
        if exp is None:  # the UI opens a model-training experiment on its runs, not on the GenAI overview
            return mlflow.create_experiment(params.mlflow.experiment, artifact_location=artifacts, tags=EXPERIMENT_TAGS)
        for k, v in EXPERIMENT_TAGS.items():  # an experiment made before the tag existed
            if (exp.tags or {}).get(k) != v:
                MlflowClient().set_experiment_tag(exp.experiment_id, k, v)
        if own and artifacts and exp.artifact_location != artifacts:  # the project's own store
            relocate_artifacts(Path(uri.removeprefix("sqlite:///")), exp.artifact_location, artifacts)
        return exp.experiment_id


def relocate_artifacts(db: Path, old: str, new: str) -> int:
    """Rewrite every artifact location under `old` (the mlartifacts/ URI of where the project was) to
    `new` (where it is): a moved or copied project then reads and writes its own artifacts, never the
    first copy's. Only file:// locations ending in /mlartifacts, as setup() makes them, are touched.
    Returns how many locations changed."""
    if not (old.startswith("file://") and old.endswith("/mlartifacts")):
        return 0  # not a location this package made: the user chose it
    changed = 0
    with contextlib.closing(sqlite3.connect(db)) as con, con:  # one transaction
        for table, column in ARTIFACT_COLUMNS:
            if column not in {row[1] for row in con.execute(f"pragma table_info({table})")}:
                continue  # an older schema without this table
            changed += con.execute(
                f"update {table} set {column} = ? || substr({column}, ?) "
                f"where {column} = ? or substr({column}, 1, ?) = ?",
                (new, len(old) + 1, old, len(old) + 1, old + "/"),
            ).rowcount
    log.warning("tracking: this project's store was made at %s: %d artifact locations now point to %s",
                old.removesuffix("/mlartifacts"), changed, new)  # fmt: skip
    return changed


def _parent_run_id(params: Params, experiment_id: str, tags: dict) -> str:
    with store_lock(mlflow.get_tracking_uri()):  # stages starting together find or make one parent
        return _find_or_make_parent(params, experiment_id, tags)


def _find_or_make_parent(params: Params, experiment_id: str, tags: dict) -> str:
    key = pipeline_key(params)
    found = mlflow.search_runs(
        [experiment_id], filter_string=f"tags.`impactx.pipeline` = '{key}'", max_results=1, output_format="list"
    )
    if found:
        return found[0].info.run_id
    name = f"{params.data.source}-{params.model.backbone}-{key[:8]}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags={**tags, "impactx.pipeline": key}) as run:
        mlflow.log_params(flatten(params.model_dump(by_alias=True, exclude={"mlflow"})))
    return run.info.run_id


@contextlib.contextmanager
def stage_run(
    stage: str, params: Params, method: str | None = None, seed: int | None = None, run_name: str | None = None
):
    """A child run of this configuration's parent run, tagged with the DVC stage, git revision, dataset,
    backbone and, where the stage has them, method and seed (the UI's compare view groups by these). It
    logs the machine's system metrics while it runs (MLflow's System metrics tab)."""
    experiment_id = setup(params)
    tags = {"dataset": params.data.source, "backbone": params.model.backbone, "git_revision": git_revision()}
    parent = _parent_run_id(params, experiment_id, tags)
    tags.update({"dvc_stage": stage, "mlflow.parentRunId": parent, "impactx.pipeline_key": pipeline_key(params)})
    if os.environ.get(FLOW_RUN_ENV):
        tags["prefect_flow_run_id"] = os.environ[FLOW_RUN_ENV]
    if method is not None:
        tags["method"] = method
    if seed is not None:
        tags["seed"] = str(seed)
    tags.update({HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), THREADS_TAG: str(torch.get_num_threads())})
    end_orphans(experiment_id)
    # system metrics (CPU, memory, disk, network; GPU with nvidia-ml-py installed) every 10 s, as system/*
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=run_name or stage, tags=tags, log_system_metrics=True
    ) as run:
        previous = signal.signal(signal.SIGTERM, _killed) if _main_thread() else None
        try:
            with _watchdog(run.info.run_id):
                yield run
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _watchdog(run_id: str):
    """Start impactx.watchdog for this run: if this process dies without leaving this block (SIGKILL, the
    OOM killer), the watcher ends the run as KILLED at once. It is in its own session, so a kill of the
    whole process group leaves it to do that; end_orphans is the fallback when it dies too."""
    read, write = os.pipe()
    try:
        subprocess.Popen(
            [sys.executable, "-m", "impactx.watchdog", mlflow.get_tracking_uri(), run_id],
            stdin=read, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    finally:
        os.close(read)
    try:
        yield
    finally:
        os.write(write, b"done")
        os.close(write)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _killed(signum, frame):
    """SIGTERM (a cancelled Prefect run, `kill`, a CI timeout): end the MLflow run as KILLED, then exit;
    the atomic writes remove their temporary files on the way out."""
    mlflow.end_run("KILLED")
    raise SystemExit(128 + signum)


def end_orphans(experiment_id: str) -> list[str]:
    """Runs left RUNNING by a stage process of this machine that no longer exists (SIGKILL, power loss)
    are ended as KILLED: no run stays RUNNING for ever. Returns their ids."""
    host = socket.gethostname()
    client = MlflowClient()
    found = client.search_runs(
        [experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'"
    )
    ended = []
    for run in found:
        pid = int(run.data.tags.get(PID_TAG, "0"))
        if pid and not _alive(pid):
            client.set_tag(run.info.run_id, "impactx.ended_by", "the next stage run: its process had died")
            client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
    return ended


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def log_params_section(params: Params, *sections: str) -> None:
    dump = params.model_dump(by_alias=True)
    mlflow.log_params(flatten({s: dump[s] for s in sections}))


def log_datasets(ds, params: Params) -> None:
    """The training and validation splits as the run's MLflow dataset inputs (name, digest, shape, source):
    the UI's Datasets column says what a model was trained and chosen on. The test split is not logged
    here: it never takes part in training."""
    from mlflow.data.numpy_dataset import from_numpy

    source = str(params.data.path or params.data.source)
    for split, context in ((ds.train, "training"), (ds.val, "validation")):
        with warnings.catch_warnings():  # a plain path "can be interpreted in multiple ways": a local one
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            data = from_numpy(split.x, source=source, targets=split.y, name=f"{params.data.source}-{context}")
        mlflow.log_input(data, context=context)


def epoch_logger(prefix: str = ""):
    def on_epoch(epoch: int, metrics: dict):
        mlflow.log_metrics({f"{prefix}{k}": v for k, v in metrics.items()}, step=epoch)

    return on_epoch


def log_model(checkpoint: Path, info, model_params, example: np.ndarray, registered_name: str | None):
    """Log a method's checkpoint as an MLflow pyfunc (impactx.serving): class, name, probabilities and
    map per image. Models from code: impactx/pyfunc_model.py and this package travel with it, the weights
    stay a weights-only checkpoint, so loading it unpickles nothing. The signature is float32
    N×C×H×W (pixels in [0, 1], or 0-255 with params {"pixels": "uint8"}) → one row per image."""
    import tempfile

    from mlflow.models import infer_signature

    from impactx import serving  # pandas and mlflow.pyfunc: loaded only by the stages that log a model

    with tempfile.TemporaryDirectory() as tmp:
        artifacts = serving.write_artifacts(Path(tmp), info, model_params, checkpoint)
        method, net, _ = serving.load_artifacts(artifacts)  # the checkpoint rebuilds from the code alone
        example = np.asarray(example, dtype=np.float32)
        out = serving.predict_table(net, method, info, example)
        with warnings.catch_warnings():  # "integer columns cannot represent missing values": an output
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
            signature = infer_signature(example, out, params=serving.DEFAULT_PARAMS)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(serving.__file__).with_name("pyfunc_model.py")),
            artifacts=artifacts,
            code_paths=[str(Path(__file__).parent)],
            signature=signature,
            input_example=example,
            model_config={"device": "auto"},
            metadata={"method": method.name, "map": method.map_kind, "classes": info.classes},
            pip_requirements=_requirements(serving.REQUIREMENTS),
            registered_model_name=registered_name,
        )


def _requirements(names) -> list[str]:
    """name==installed version for each distribution (the loaded model's own imports)."""
    from importlib.metadata import version

    return [f"{n}=={version(n).split('+')[0]}" for n in names]


def log_evaluation(record: dict, ds, params: Params, device, checkpoint: Path) -> None:
    """The evaluate stage's MLflow part: the metrics (with the explain() latency against post-hoc SHAP),
    the model as an explaining pyfunc (log_model) with its weights-only checkpoint beside it, and its
    registry version, promoted to champion when its validation accuracy beats the champion's."""
    metrics = {k: record[k] for k in ("test_accuracy", "val_accuracy", "aopc", "aopc_random")}
    for m, scores in record.get("faithfulness", {}).items():  # same-model faithfulness: own, shap, random
        metrics |= {f"{m}_{k}": scores[k] for k in ("aopc", "aopc_lerf", "srg")}
    for m, scores in record.get("fidelity", {}).items():  # agreement with the teacher: map and floors
        metrics |= {f"fidelity_{m}_{k}": v for k, v in scores.items()}
    for t in record.get("latency", []):  # explain() against post-hoc SHAP of this model, 1 and 256 images
        n = t["images"]
        metrics |= {f"explain_speedup_{n}": t["speedup"], f"explain_seconds_{n}": t["explain_s"],
                    f"post_hoc_shap_seconds_{n}": t["shap_s"]}  # fmt: skip
    mlflow.log_metrics(metrics)
    mlflow.log_artifact(str(checkpoint), artifact_path=CHECKPOINT_DIR)
    name = f"{params.data.source}-{params.model.backbone}-{record['method']}" if params.mlflow.register_models else None
    checksum = hashlib.md5(checkpoint.read_bytes()).hexdigest()
    registered = _version_of(name, checksum) if name else None  # this checkpoint, registered before
    logged = log_model(checkpoint, ds.info, params.model, to_float(ds.test.x[:2]).numpy(), None if registered else name)
    if name:
        version = registered or str(logged.registered_model_version)
        if registered is None:
            settings = methods.get(record["method"]).settings(params).model_dump(by_alias=True)
            tags = {"method": record["method"], "seed": str(record["seed"]), "git_revision": git_revision(),
                    CHECKSUM_TAG: checksum} | ({"lambda": str(settings["lambda"])} if "lambda" in settings else {})  # fmt: skip
            for k, v in tags.items():
                MlflowClient().set_model_version_tag(name, version, k, v)
        split_id = hashlib.sha256(ds.val.x.tobytes() + ds.val.y.tobytes()).hexdigest()[:16]

        def score_checkpoint(path: Path) -> float:  # weights only: no code of the champion's runs here
            return accuracy(methods.load(path, ds.info, params.model)[1], ds.val, device)

        promote_if_better(name, version, record["val_accuracy"], score_checkpoint, split_id)


def _version_of(name: str, checksum: str) -> str | None:
    """The registry version of `name` whose checkpoint has this md5 (tag checkpoint_md5), if any: a stage
    that re-evaluates an unchanged checkpoint adds no version."""
    try:
        found = MlflowClient().search_model_versions(f"name = '{name}' and tags.{CHECKSUM_TAG} = '{checksum}'")
    except MlflowException:  # no such registered model yet
        return None
    return str(min(int(v.version) for v in found)) if found else None


def promote_if_better(name: str, version: str, new_score: float, score_checkpoint, split_id: str) -> bool:
    """Give `version` the champion alias if its validation accuracy beats the current champion's on the
    same validation split. Models are picked by validation, never by test.

    The champion is scored now, on this split, from its own weights-only checkpoint (logged beside the
    model) by `score_checkpoint(path)`: never unpickled, and never taken at its tags' word (a version's
    tags are anyone's to set). A champion without such a checkpoint cannot be compared safely: it is
    replaced, with a line that says so. Reading the champion and setting the alias happen under the
    store's lock (store_lock), so two evaluations at once cannot both win against the same champion."""
    client = MlflowClient()
    client.set_model_version_tag(name, version, "val_accuracy", f"{new_score:.6f}")  # for the UI: not evidence
    client.set_model_version_tag(name, version, "split_id", split_id)
    with store_lock(mlflow.get_tracking_uri()):
        try:
            champ = client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            champ = None
        if champ is not None and str(champ.version) != str(version):
            champ_score = _champion_score(client, champ, score_checkpoint)
            if champ_score is None:
                log.info(
                    "registry: %s@%s v%s has no weights-only checkpoint to score (it is never unpickled):"
                    " replaced by v%s", name, CHAMPION, champ.version, version,
                )  # fmt: skip
            elif new_score <= champ_score:
                log.info(
                    "registry: %s v%s (%.4f) does not beat @%s v%s (%.4f, scored now) on this validation split",
                    name, version, new_score, CHAMPION, champ.version, champ_score,
                )  # fmt: skip
                return False
        client.set_registered_model_alias(name, CHAMPION, version)
    log.info("registry: %s v%s is now @%s (validation accuracy %.4f)", name, version, CHAMPION, new_score)
    return True


def _champion_score(client: MlflowClient, champ, score_checkpoint) -> float | None:
    """The champion's validation accuracy on this split from its weights-only checkpoint, scored now
    without running any of its code; None when it has none that loads."""
    if not champ.run_id:
        return None
    try:
        files = client.list_artifacts(champ.run_id, CHECKPOINT_DIR)
        if not files:
            return None
        local = mlflow.artifacts.download_artifacts(run_id=champ.run_id, artifact_path=files[0].path)
        return score_checkpoint(Path(local))
    except (MlflowException, OSError, KeyError, RuntimeError, ValueError, ImpactXError, pickle.UnpicklingError) as e:
        log.warning("registry: cannot score the champion's checkpoint (%s: %s)", type(e).__name__, e)
        return None
