"""The registered model is an MLflow pyfunc that returns, per image, the class index and name, the
probabilities and the method's own map; it rejects pixels in the wrong range, loads without unpickling,
names every distribution it imports, and answers a real HTTP request from `mlflow models serve`."""

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from conftest import free_port, tiny_info
from PIL import Image

from impactx import ImpactXError, methods, serving, tracking
from impactx.methods import Stage1
from impactx.params import parse_params

INFO = tiny_info()


@pytest.fixture
def checkpoints(tmp_path):
    """Weights-only checkpoints of a baseline and an IMPACTX model (untrained layers, seeded)."""
    torch.manual_seed(0)
    params = parse_params({"impactx": {"latent_dim": 32}})
    base = tmp_path / "baseline.pt"
    methods.save(base, "baseline", params.baseline, methods.build("baseline", Stage1(INFO, params.model), params))
    imp = tmp_path / "impactx.pt"
    model = methods.build("impactx", Stage1(INFO, params.model, base), params)
    methods.save(imp, "impactx", methods.get("impactx").settings(params), model)
    return params, {"baseline": base, "impactx": imp}


def images(n=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32)).astype(np.float32)


def test_one_row_per_image_with_class_name_probabilities_and_map(checkpoints, tmp_path):
    params, ckpts = checkpoints
    method, net, info = serving.load_artifacts(serving.write_artifacts(tmp_path, INFO, params.model, ckpts["impactx"]))
    x = images()
    table = serving.predict_table(net, method, info, x / 255)
    with torch.no_grad():
        logits, maps = net.explain(torch.from_numpy(x / 255).float())
    assert list(table.columns) == list(serving.COLUMNS) and len(table) == 3
    assert table.class_index.tolist() == logits.argmax(1).tolist()
    assert table.class_name.tolist() == [INFO.classes[k] for k in table.class_index]
    probs = np.array(table.probabilities.tolist())
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)
    np.testing.assert_allclose(table.probability, probs.max(1), atol=1e-7)
    np.testing.assert_allclose(np.array(table["map"].tolist()), maps.numpy(), atol=1e-6)  # D(LEP(x)), one pass
    same = serving.predict_table(net, method, info, x, {"pixels": "uint8"})  # 0-255, said so
    np.testing.assert_allclose(np.array(same.probabilities.tolist()), probs, atol=1e-6)
    assert serving.predict_table(net, method, info, x / 255, {"explain": False})["map"].isna().all()
    base_method, base, _ = serving.load_artifacts(
        serving.write_artifacts(tmp_path, INFO, params.model, ckpts["baseline"])
    )
    assert serving.predict_table(base, base_method, info, x / 255)["map"].isna().all()  # post hoc: no own map


@pytest.mark.parametrize(
    "head",
    [{"decoder": "spatial"}, {"decoder_prior": "class"}, {"decoder_prior": "class", "decoder_output": "per_class"}],
)
def test_a_served_explanation_head_returns_its_own_map(checkpoints, tmp_path, head):
    params, ckpts = checkpoints
    params = params.model_copy(update={"impactx": params.impactx.model_copy(update=head)})
    path = tmp_path / "head.pt"
    model = methods.build("impactx", Stage1(INFO, params.model, ckpts["baseline"]), params)
    if model.templates is not None:  # a trained prior: not the zeros it starts from
        torch.nn.init.normal_(model.templates)
    methods.save(path, "impactx", methods.get("impactx").settings(params), model)
    method, net, info = serving.load_artifacts(serving.write_artifacts(tmp_path, INFO, params.model, path))
    assert net.spatial == ("decoder" in head) and (net.templates is not None) == ("decoder_prior" in head)
    x = images()
    with torch.no_grad():
        _, maps = model.eval().explain(torch.from_numpy(x / 255).float())
    table = serving.predict_table(net, method, info, x / 255)
    np.testing.assert_allclose(np.array(table["map"].tolist()), maps.numpy(), atol=1e-5)


@pytest.mark.parametrize(
    "x,params,message",
    [
        (images(), {}, r"span \[0, 25\d\], outside \[0, 1\] for pixels 'unit' \(values up to 255: pass params"),
        (images() / 255, {"pixels": "uint8"}, "whole numbers 0-255: these have fractions"),
        (images() * 2, {"pixels": "uint8"}, r"outside \[0, 255\]"),
        (-images() / 255, {}, r"outside \[0, 1\]"),
        (np.full((1, 3, 32, 32), np.nan, np.float32), {}, "NaN or infinite"),
        (images()[:, :, :16], {}, r"shape \(3, 3, 16, 32\): this model takes N×3×32×32"),
        (images(), {"pixels": "percent"}, "params.pixels is 'percent'"),
    ],
)
def test_pixels_in_the_wrong_range_are_rejected_with_the_fix(x, params, message):
    with pytest.raises(ImpactXError, match=message):
        serving.to_unit(x, params.get("pixels", "unit"), INFO.image_shape)


@pytest.fixture
def registered(checkpoints, tmp_path, monkeypatch):
    params, ckpts = checkpoints
    monkeypatch.chdir(tmp_path)
    params = params.model_copy(
        update={"mlflow": params.mlflow.model_copy(update={"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"})}
    )
    tracking.setup(params)
    with tracking.stage_run("evaluate", params):
        logged = tracking.log_model(ckpts["impactx"], INFO, params.model, images(2) / 255, "toy-lenet5-impactx")
    return params, logged, tmp_path


def test_a_symlinked_checkpoint_is_logged_and_loads(checkpoints, tmp_path, monkeypatch):
    """DVC's `cache.type: symlink` leaves models/<method>/seed<N>.pt a link into .dvc/cache: MLflow refused it
    ("resolved path is outside the artifact directory") and the evaluate stage failed."""
    params, ckpts = checkpoints
    monkeypatch.chdir(tmp_path)
    linked = tmp_path / "models" / "seed0.pt"
    linked.parent.mkdir()
    linked.symlink_to(ckpts["impactx"])
    uri = f"sqlite:///{tmp_path}/linked.db"
    params = params.model_copy(update={"mlflow": params.mlflow.model_copy(update={"tracking_uri": uri})})
    tracking.setup(params)
    with tracking.stage_run("evaluate", params):
        logged = tracking.log_model(linked, INFO, params.model, images(2) / 255, "toy-linked")
    out = mlflow.pyfunc.load_model(logged.model_uri).predict(images(2), params={"pixels": "uint8"})
    assert len(out) == 2 and linked.is_symlink()


def test_logged_model_is_code_and_a_weights_only_checkpoint(registered):
    params, logged, root = registered
    local = Path(mlflow.artifacts.download_artifacts(logged.model_uri))
    assert not list(local.rglob("*.pkl")) and not list(local.rglob("*.pickle"))  # no pickled model
    flavor = mlflow.models.Model.load(str(local / "MLmodel")).flavors["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in flavor
    ckpt = torch.load(local / flavor["artifacts"]["checkpoint"]["path"], weights_only=True)  # tensors only
    assert ckpt["method"] == "impactx"
    meta = mlflow.models.Model.load(str(local / "MLmodel")).metadata
    assert meta["classes"] == INFO.classes and meta["method"] == "impactx"
    loaded = mlflow.pyfunc.load_model("models:/toy-lenet5-impactx/1")
    sig = loaded.metadata.signature
    assert sig.inputs.inputs[0].shape == (-1, 3, 32, 32) and sig.params.to_dict()[1]["name"] == "pixels"
    out = loaded.predict(images(2), params={"pixels": "uint8"})
    assert len(out) == 2 and np.array(out["map"][0]).shape == (3, 32, 32)
    requirements = (local / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in requirements} >= {*serving.REQUIREMENTS, "mlflow"}


def test_requirements_name_every_distribution_the_loaded_model_imports(checkpoints, tmp_path):
    """In a fresh interpreter: what loading and running the model imports, beyond MLflow's own imports."""
    params, ckpts = checkpoints
    serving.write_artifacts(tmp_path, INFO, params.model, ckpts["impactx"])
    code = f"""
import sys, json, importlib.metadata as md
import mlflow.pyfunc
before = set(sys.modules)
from impactx import serving
import numpy as np
m, net, info = serving.load_artifacts({{"checkpoint": {str(ckpts["impactx"])!r}, "info": {str(tmp_path / "info.json")!r}}})
serving.predict_table(net, m, info, np.zeros((1, 3, 32, 32), np.float32))
tops = {{n.split(".")[0] for n in set(sys.modules) - before}} - set(sys.stdlib_module_names) - {{"impactx"}}
dists = md.packages_distributions()
print(json.dumps(sorted({{d for t in tops for d in dists.get(t, [t])}})))
"""
    used = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    covered = closure([*serving.REQUIREMENTS, "mlflow"])  # what installing the requirements installs
    missing = {canonical(d) for d in used} - covered - OPTIONAL
    assert not missing, f"add {sorted(missing)} to impactx.serving.REQUIREMENTS"


OPTIONAL = {"pydot"}  # torch.fx imports it only when it is installed (dvc installs it here)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(names) -> set[str]:
    """The distributions and everything they require, transitively (as installed here)."""
    seen, todo = set(), [canonical(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo += [canonical(re.match(r"[A-Za-z0-9_.-]+", r).group()) for r in reqs if "extra ==" not in r]
    return seen


def post(url: str, body: dict | bytes, timeout: float = 30):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def served(registered):
    """`mlflow models serve` of the registered IMPACTX on 127.0.0.1: its /invocations URL."""
    params, _, root = registered
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # mlflow starts uvicorn from PATH, as in an activated venv
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": params.mlflow.tracking_uri,
        "PATH": bin_dir + os.pathsep + os.environ["PATH"],
    }
    cmd = ["mlflow", "models", "serve", "-m", "models:/toy-lenet5-impactx/1",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    server = subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        try:
            url = serving.wait_until_serving(port, server)
        except ImpactXError as e:
            pytest.fail(f"{e}:\n{server.stdout.read().decode()[-3000:]}")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_mlflow_models_serve_answers_a_real_image_with_class_and_map(served, tmp_path):
    png = tmp_path / "cat.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(png)
    pixels = np.asarray(Image.open(png).convert("RGB")).transpose(2, 0, 1)[None]  # 1×3×32×32, 0-255
    status, body = post(served, {"inputs": pixels.tolist(), "params": {"pixels": "uint8"}})
    assert status == 200, body
    (row,) = body["predictions"]
    assert row["class_name"] in INFO.classes and INFO.classes[row["class_index"]] == row["class_name"]
    assert abs(sum(row["probabilities"]) - 1) < 1e-5 and np.array(row["map"]).shape == (3, 32, 32)
    status, body = post(served, {"inputs": pixels.tolist()})  # 0-255 sent as if in [0, 1]
    assert status == 400 and 'pass params {"pixels": "uint8"}' in body["message"]


def test_the_server_under_load_answers_every_request_and_bad_bodies_with_one_clear_4xx(served):
    """Two hundred requests of 8 images, 4 at a time, then malformed bodies: every good request gets its
    8 rows; no bad body gets a 5xx, each gets a 400 whose message names the problem (MLflow puts a repr of
    the data before it, and echoes an unparsable body whole). Latency under load: benchmarks/serving.py."""
    batch = images(8, seed=2).tolist()
    body = {"inputs": batch, "params": {"pixels": "uint8"}}
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post(served, body), range(200)))
    assert all(status == 200 and len(b["predictions"]) == 8 for status, b in answers)
    assert len({json.dumps(b["predictions"][0]["probabilities"]) for _, b in answers}) == 1  # the same answer
    nan = images(2).tolist()
    nan[0][0][0][0] = float("nan")
    bad = {
        "wrong shape": ({"inputs": images(2)[:, :, :16].tolist()}, "does not match expected shape (-1, 3, 32, 32)"),
        "NaN": (json.dumps({"inputs": nan}).encode(), "Error: images contain NaN or infinite values"),
        "0-255 integers as unit": ({"inputs": images(2).astype(int).tolist()}, 'pass params {"pixels": "uint8"}'),
        "empty": ({"inputs": []}, "Failed to enforce schema of data '[]'"),
        "garbage": (b"\x00garbage" * 200_000, "Ensure that input is a valid JSON formatted string"),
        "unknown pixels": ({"inputs": batch, "params": {"pixels": "rgb"}}, "use 'unit'"),
    }
    for name, (payload, expected) in bad.items():
        status, answer = post(served, payload)
        message = answer.get("message", "")
        assert 400 <= status < 500, (name, status, message[:300])
        assert expected in message, (name, message[:300])


def write_png(path: Path, w: int, h: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_impactx_explain_writes_class_and_map_for_a_folder_of_pngs(registered, tmp_path):
    params, _, root = registered
    folder = tmp_path / "mine"
    write_png(folder / "a.png", 32, 32)
    write_png(folder / "sub" / "b.png", 64, 48, seed=1)  # another size: resized, with a note
    (folder / "notes.txt").write_text("not an image")  # in a folder, only image files are read
    env = {**os.environ, "MLFLOW_TRACKING_URI": params.mlflow.tracking_uri}
    cmd = [sys.executable, "-m", "impactx", "explain", str(folder), "--model", "models:/toy-lenet5-impactx/1",
           "--out", str(tmp_path / "out")]  # fmt: skip
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(folder / "a.png"), str(folder / "sub" / "b.png")]
    assert all(re.fullmatch(r".*: [0-3] \(0\.\d{3}\)", line) for line in lines)
    assert "is 64×48, resized to the model's 32×32" in p.stderr
    for name in ("a", "b"):
        with Image.open(tmp_path / "out" / f"{name}.png") as im:
            assert im.size[0] > im.size[1] > 100  # the image, the overlay and a colour scale


def test_explain_outside_a_project_names_where_it_looks_and_creates_no_store(tmp_path, capsys, monkeypatch):
    from impactx import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    png = write_png(tmp_path / "x.png", 32, 32)
    assert cli.main(["explain", str(png), "--model", "models:/digits-lenet5-impactx@champion"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no tracking store" in err and "--tracking-uri" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]  # no mlflow.db, no mlruns, no output


def test_explain_output_names_never_collide():
    from impactx.cli import unique_names

    files = [Path("dup/x.png"), Path("dup/x.jpg"), Path("a/y.png"), Path("b/dup/x.png"), Path("a/y.png")]
    names = unique_names(files)
    assert len(set(names)) == len(files)  # "wrote 5 PNGs" writes five
    assert names[:2] == ["dup_x_png", "dup_x_jpg"] and names[2] == "a_y_png" and names[4] == "a_y_png-2"
    assert unique_names([Path("one/a.png"), Path("b.png")]) == ["a", "b"]  # a stem of its own stays as it is


def test_impactx_explain_bad_input_is_one_line_and_exit_2(registered, tmp_path, capsys, monkeypatch):
    from impactx import cli

    params, _, root = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", params.mlflow.tracking_uri)
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    cases = [
        ([str(fake), "--model", "models:/toy-lenet5-impactx/1"], "fake.png is not an image PIL can read"),
        ([str(write_png(tmp_path / "ok.png", 32, 32)), "--model", "models:/nope@champion"], "cannot load model 'models:/nope@champion'"),
        ([str(tmp_path / "missing"), "--model", "models:/toy-lenet5-impactx/1"], "missing does not exist"),
    ]  # fmt: skip
    for argv, message in cases:
        assert cli.main(["explain", *argv, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "out").exists()  # nothing written for bad input


def test_impactx_explain_runs_nothing_a_forged_champion_carries(registered, tmp_path, capsys, monkeypatch):
    """A registered version whose unpickling runs a shell command, set as @champion: `impactx explain`
    rebuilds models from weights-only checkpoints, so it refuses that one with one line and runs nothing."""
    from test_tracking import RunsCodeWhenUnpickled

    from impactx import cli

    params, _, root = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", params.mlflow.tracking_uri)
    marker = tmp_path / "pwned"
    with tracking.stage_run("evaluate", params, run_name="evil"):
        info = mlflow.pytorch.log_model(RunsCodeWhenUnpickled(marker), name="model", serialization_format="pickle",
                                        registered_model_name="toy-lenet5-impactx", pip_requirements=["torch"])  # fmt: skip
    mlflow.MlflowClient().set_registered_model_alias("toy-lenet5-impactx", "champion", info.registered_model_version)
    png = str(write_png(tmp_path / "ok.png", 32, 32))
    capsys.readouterr()  # what registering it printed
    assert (
        cli.main(["explain", png, "--model", "models:/toy-lenet5-impactx@champion", "--out", str(tmp_path / "o")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not an impactx model" in err, err
    assert not marker.exists() and not (tmp_path / "o").exists()
    assert cli.main(["explain", png, "--model", "models:/toy-lenet5-impactx/1", "--out", str(tmp_path / "o")]) == 0


def test_a_copied_project_explains_with_its_own_artifacts(registered, tmp_path, capsys, monkeypatch):
    """Copy a project, remove the original's artifacts: `impactx explain` in the copy reads the copy's."""
    import shutil

    import yaml

    params, _, root = registered
    settings = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    settings["mlflow"] = {**settings["mlflow"], "tracking_uri": "sqlite:///mlflow.db"}  # the project's own store
    (root / "params.yaml").write_text(yaml.safe_dump(settings))
    copy = tmp_path.parent / f"{tmp_path.name}-copy"
    shutil.copytree(root, copy)
    shutil.move(root / "mlartifacts", root / "gone")
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    png = str(write_png(copy / "ok.png", 32, 32))
    assert cli_main(["explain", png, "--model", "models:/toy-lenet5-impactx/1", "--out", str(copy / "o")]) == 0
    assert (copy / "o" / "ok.png").exists(), capsys.readouterr().err


def cli_main(argv):
    from impactx import cli

    return cli.main(argv)
