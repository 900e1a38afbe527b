"""The stages' plumbing: where a foreach stage's seed and method come from, and that no params value
reaches the shell that DVC runs a command in."""

import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from impactx import ImpactXError
from impactx.stage import stage_argv


def test_a_stage_reads_its_method_and_seed_from_its_dvc_name():
    assert stage_argv("baseline@0") == ["baseline", "0"]
    assert stage_argv("train@impactx-3") == ["impactx", "3"]
    assert stage_argv("train_control@impactx_lambda0-12") == ["impactx_lambda0", "12"]
    assert stage_argv("evaluate@abn", seed=False) == ["abn"]
    assert stage_argv("attribution@2", method=False) == ["2"]


@pytest.mark.parametrize("name", ["baseline@0; touch x", "attribution@$(touch x)", "train@impactx-0`id`", "fetch"])
def test_a_seed_that_is_not_a_number_is_one_line_before_anything_runs(name):
    with pytest.raises(ImpactXError, match="seed|foreach key"):
        stage_argv(name, method=not name.startswith("attribution"))


def test_no_command_in_dvc_yaml_interpolates_a_value():
    """DVC runs `cmd` in a shell: a params value interpolated into it (`seeds: ["0; touch x"]`) would run,
    whatever stage is targeted, before any check of params.yaml."""
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        cmd = stage.get("cmd") or stage["do"]["cmd"]
        assert "${" not in cmd, f"{name}: {cmd}"


def test_under_dvc_a_bad_seed_in_the_stage_name_exits_2_with_one_line(tmp_path):
    marker = tmp_path / "x"
    env = {"DVC_STAGE": f"baseline@0; touch {marker}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "stages.train"], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 2 and not marker.exists()
    assert out.stderr.strip().splitlines() == [
        f"error: DVC stage 'baseline@0; touch {marker}' does not end in a whole-number seed: "
        "`seeds` in params.yaml takes integers"
    ]
