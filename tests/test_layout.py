"""dvc.yaml declares exactly the paths impactx.layout gives the stages, and the controls' parameters
are their method's section."""

from pathlib import Path

import pytest
from conftest import REPO

from impactx import layout, methods
from impactx.params import load_params


@pytest.fixture(scope="module")
def stages():
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return {s.addressing: s for s in repo.index.stages}


def outs(stage) -> list[Path]:
    return sorted(Path(o.def_path) for o in stage.outs)


def test_every_declared_output_is_a_layout_path(stages):
    params = load_params(REPO / "params.yaml")
    expected = {"check_params": [], "fetch_data": [layout.PREPARED]}
    for s in params.seeds:
        expected[f"baseline@{s}"] = [layout.model("baseline", s)]
        expected[f"attribution@{s}"] = [layout.attribution_maps(s), layout.attribution_meta(s)]
        expected[f"teacher@{s}"] = [layout.teacher_maps(s)]
        for kind, names in (("", params.methods), ("_control", params.controls)):
            for m in names:
                expected[f"train{kind}@{m}-{s}"] = [layout.model(m, s)]
    for kind, names in (("", params.methods), ("_control", params.controls), ("_baseline", ["baseline"])):
        for m in names:
            expected[f"evaluate{kind}@{m}"] = [layout.results(m)]
    expected["compare"] = [
        *layout.FIGURES.values(),
        layout.TABLE_MD,
        layout.MORF_PLOT,
        layout.TABLE_JSON,
        layout.HEADLINE_JSON,
    ]
    assert set(stages) == set(expected)
    for name, paths in expected.items():
        assert outs(stages[name]) == sorted(paths), name


def test_train_control_depends_on_its_methods_whole_section(stages):
    """DVC's params are per stage group, and the controls in train_control fix different settings (λ for
    one, map_pairing for the shuffled ones): the group reads the whole section, λ included, so a new λ
    re-trains the λ = 0 control too (to the same weights)."""
    for name in load_params(REPO / "params.yaml").controls:
        control = methods.get(name)
        keys = [f"{control.section}.{f.alias or k}" for k, f in control.params.model_fields.items()]
        declared = [p for d in stages[f"train_control@{name}-0"].deps if hasattr(d, "params") for p in d.params]
        assert sorted(declared) == sorted(["model", "recipe", "training", *keys])


def test_a_controls_stages_depend_on_the_module_of_the_method_it_controls(stages):
    for name in load_params(REPO / "params.yaml").controls:
        parent = f"impactx/methods/{methods.get(name).control_of}.py"
        for stage in (f"train_control@{name}-0", f"evaluate_control@{name}"):
            assert parent in [str(d.def_path) for d in stages[stage].deps], stage


def test_check_params_depends_on_every_key(stages):
    (dep,) = [d for d in stages["check_params"].deps if hasattr(d, "params")]
    assert dep.params == []  # `params.yaml:` with no keys: the whole file
