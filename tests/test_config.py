from pathlib import Path

import pytest

from impactx import ImpactXError
from impactx.backbones import build_backbone
from impactx.params import load_params

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_repo_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.data.source == "digits" and params.impactx.lambda_ == 1.0
    assert params.seeds == [0, 1, 2] and params.methods == ["impactx", "abn", "wae"]
    assert params.controls == ["impactx_lambda0"]


@pytest.mark.parametrize(
    "text,message",
    [
        ("baseline:\n  epoch: 3\n", "unknown key 'baseline.epoch'"),
        ("baseline:\n  epochs: three\n", r"baseline.epochs: .*integer.*'three'"),
        ("baseline:\n  lr: 1e-3x\n", r"baseline.lr: .*valid number.*1e-3x"),
        ("impactx:\n  lambda: -1\n", r"impactx.lambda: .*greater than or equal to 0"),
        ("data:\n  source: mnist\n", r"data.source: .*'digits'"),
        ("seed: [1\n", "not valid YAML"),
        ("seeds: [0, 0]\n", "seeds: Value error, has a repeated entry"),
        ("seeds: []\n", "seeds: List should have at least 1 item"),
        ("seeds: [-1]\n", "seeds: Value error, seeds must be non-negative integers"),
        ("methods: [baseline, abn]\n", "methods: Value error, the baseline always runs"),
        (
            "methods: [abn, gradcam]\n",
            r"methods: Value error, 'gradcam' is not a stage-2 method: use one of \['abn', 'impactx', 'wae'\]",
        ),
        ("methods: [impactx_lambda0]\n", r"'impactx_lambda0' is not a stage-2 method"),
        (
            "controls: [abn]\n",
            r"controls: Value error, 'abn' is not a control: use one of \['impactx_lambda0', 'impactx_shuffled_all', 'impactx_shuffled_class'\] or \[\]",
        ),
        ("impactx:\n  lambda: one\n", r"impactx.lambda: .*valid number.*'one'"),
        ("abn:\n  latent_dim: 8\n", "unknown key 'abn.latent_dim'"),
        ("foo: 1\n", "unknown key 'foo'"),
        ("model:\n  backbone: resnet18\n", r"model: backbone 'resnet18' is not registered: use one of \['cnn3'"),
    ],
)
def test_bad_params_give_one_line(tmp_path, text, message):
    with pytest.raises(ImpactXError, match=message) as e:
        load_params(write(tmp_path, text))
    assert "\n" not in str(e.value)


def test_missing_params_file(tmp_path):
    with pytest.raises(ImpactXError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_unknown_backbone():
    with pytest.raises(ImpactXError, match="unknown backbone 'resnet9'.*lenet5"):
        build_backbone("resnet9", 3, 10, 32)


def test_a_float_written_with_an_exponent_is_that_number(tmp_path):
    """YAML 1.1 reads 1e-3 as the string '1e-3'; a float key takes it as 0.001, an int key does not."""
    params = load_params(write(tmp_path, "baseline:\n  lr: 1e-3\n  weight_decay: 5e-4\nimpactx:\n  lambda: 2e0\n"))
    assert params.baseline.lr == 0.001 and params.baseline.weight_decay == 0.0005 and params.impactx.lambda_ == 2.0
    with pytest.raises(ImpactXError, match="baseline.epochs"):
        load_params(write(tmp_path, "baseline:\n  epochs: 1e1\n"))
