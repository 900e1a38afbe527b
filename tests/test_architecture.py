"""What keeps the layout honest: no import cycle, params.yaml spells every schema key, each DVC stage's
code deps are its entry point's import closure, and the built wheel holds every module."""

import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml
from conftest import REPO

from impactx import attribution, imports, methods
from impactx.params import schema_keys


def test_the_package_has_no_import_cycle():
    g = imports.graph(REPO)
    assert "impactx.attribution" in g["impactx.attribution.deeplift"]  # function-level imports are read too
    assert "impactx.serving" in g["impactx.tracking"]  # (tracking imports serving inside a function)
    assert imports.cycles(g) == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "impactx"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from impactx import b\n")
    (pkg / "b.py").write_text("def f():\n    from impactx.c import g\n")
    (pkg / "c.py").write_text("import impactx.a\n")
    (pkg / "d.py").write_text("from . import a\n")
    assert imports.cycles(imports.graph(tmp_path)) == [["impactx.a", "impactx.b", "impactx.c"]]


def flat_keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        if isinstance(v, dict):
            out |= flat_keys(v, f"{prefix}{k}.")
        else:
            out.add(prefix + k)
    return out


def test_params_yaml_spells_every_key_of_the_schema():
    """A default that only lives in the code is invisible to DVC: changing it would re-run nothing."""
    spelled = flat_keys(yaml.safe_load((REPO / "params.yaml").read_text()))
    keys = schema_keys()
    assert sorted(keys - spelled) == [], "in the schema, not in params.yaml"
    assert sorted(spelled - keys) == [], "in params.yaml, not in the schema"


def code_files(root: Path, dep: str) -> set[Path]:
    path = root / dep
    if path.is_dir():
        return {p.relative_to(root) for p in path.rglob("*.py") if "__pycache__" not in p.parts}
    return {Path(dep)} if path.suffix == ".py" else set()


def test_each_stage_depends_on_its_import_closure_and_nothing_else():
    """Code deps = the closure of the entry point (`python -m stages.<name>`), of the method its command
    names (impactx/methods/<method>.py) and of the attribution methods its deps name. A registry's other
    modules are discovered at run time and are not deps, so a new method re-runs only its own stages."""
    from dvc.repo import Repo

    g = imports.graph(REPO)
    r_modules = {f"impactx/attribution/{n}.py" for n in attribution.names()}
    with Repo(str(REPO)) as repo:
        stages = list(repo.index.stages)
    assert len(stages) > 10
    for stage in stages:
        words = shlex.split(stage.cmd)
        assert words[:3] == ["python", "-m", words[2]] and words[2].startswith("stages."), stage.cmd
        listed = set().union(*(code_files(REPO, d.def_path) for d in stage.deps))
        family, _, key = stage.addressing.partition("@")  # the stage reads its method from its name
        named = words[3:] or [family, key, key.rpartition("-")[0]]  # baseline@0, evaluate@abn, train@wae-1
        roots = [words[2]] + [f"impactx.methods.{w}" for w in named if w in methods.names()]
        roots += [imports.module_name(REPO, REPO / p) for p in sorted(str(p) for p in listed) if p in r_modules]
        expected = imports.closure(REPO, roots, g)
        missing = sorted(str(p) for p in expected - listed)
        extra = sorted(str(p) for p in listed - expected)
        assert (missing, extra) == ([], []), f"{stage.addressing}: add {missing}, remove {extra} (dvc.yaml)"


def test_stages_that_compute_maps_depend_on_the_attribution_method_they_run():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("attribution", "teacher"):
        assert "impactx/attribution" in dvc[name]["do"]["deps"]  # R is a param: every registered one
    assert "impactx/attribution/shap_partition.py" in dvc["evaluate"]["do"]["deps"]  # post-hoc SHAP


def test_the_wheel_holds_every_module_and_imports_outside_the_checkout(tmp_path):
    """`pip install .` ships the registries' packages (impactx/methods, impactx/attribution) too. Built
    from a copy of the sources: setuptools writes build/ and *.egg-info beside them."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "impactx", src / "impactx", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(src)], check=True, capture_output=True)  # fmt: skip
    wheel = next(tmp_path.glob("impactx-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(REPO)) for p in (REPO / "impactx").rglob("*.py") if "__pycache__" not in p.parts}
    assert sorted(modules - names) == []
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import impactx.params as p, impactx.cli, impactx.tracking, impactx.fanout; p.params_model(); print(p.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.strip().startswith(str(site))
