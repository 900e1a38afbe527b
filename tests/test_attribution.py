"""R as a param: every attribution method finds the pixels a model is known to use, explains the
softmax probability of the target class, and is seeded per image so shards do not depend on where
they start."""

import numpy as np
import pytest
import torch
from conftest import tiny_info
from torch import nn

from impactx import ImpactXError, attribution, methods, tracking
from impactx.attribution import Spec, attribute
from impactx.methods import Stage1
from impactx.params import parse_params
from impactx.shards import compute_maps
from impactx.teacher import explained_model

PATCH = (slice(None), slice(None), slice(4, 8), slice(4, 8))  # the only pixels the model reads


class PatchModel(nn.Module):
    """Two classes; the logit gap is the mean of a 4×4 patch over the channels (nothing else matters)."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.mix = nn.Conv2d(channels, 1, 1, bias=False)
        nn.init.constant_(self.mix.weight, 1.0)

    def forward(self, x):
        v = self.mix(x)[:, 0, 4:8, 4:8].flatten(1).mean(1)
        return torch.stack([v - 1.5, 1.5 - v], 1)


COST = {"shap_partition": 500, "integrated_gradients": 16, "gradient_shap": 8}


def spec(method: str, cost: int | None = None) -> Spec:
    return Spec.default(method, cost or COST.get(method), batch_size=64)


@pytest.mark.parametrize(
    "method, masker",
    [(m, None) for m in attribution.names() if m != "shap_partition"]
    + [("shap_partition", "blur(4,4)"), ("shap_partition", "inpaint_telea")],
)
@pytest.mark.parametrize("channels", [1, 3])  # the image-folder source: grey (L) or RGB
def test_grey_and_rgb_images_get_maps_of_their_shape(method, masker, channels):
    """A one-channel image folder is data the pipeline accepts: OpenCV's blur and inpaint drop a grey
    image's channel axis, which stopped the attribution stage with a traceback after stage 1 had trained."""
    s = spec(method)
    if masker:
        s = Spec(method, s.options.model_copy(update={"masker": masker}), s.batch_size)
    x = torch.rand(3, channels, 12, 12, generator=torch.Generator().manual_seed(0))
    maps = attribute(PatchModel(channels), x, np.zeros(3, int), s)
    assert maps.shape == (3, channels, 12, 12) and np.isfinite(maps).all()
    outside = np.ones(maps.shape, bool)
    outside[PATCH] = False
    assert np.abs(maps[PATCH]).mean() > 2 * np.abs(maps[outside]).mean()  # the pixels the model reads


@pytest.mark.parametrize("method", attribution.names())
def test_every_method_finds_the_pixels_the_model_uses(method):
    model, x = PatchModel(), torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a = attribute(model, x, np.zeros(5, int), spec(method))
    assert a.shape == x.shape and a.dtype == np.float32
    inside = np.abs(a[PATCH]).sum((1, 2, 3))
    assert (inside / np.abs(a).sum((1, 2, 3)) > 0.999).all() and (inside > 0).all()
    other = attribute(model, x, np.ones(5, int), spec(method))  # p1 = 1 − p0: the opposite map
    np.testing.assert_allclose(other, -a, atol=1e-5)
    if method in ("integrated_gradients", "deeplift"):  # from a black image: brighter patch, more class 0
        assert (a[PATCH].sum((1, 2, 3)) > 0).all()


def test_integrated_gradients_adds_up_to_the_probability_change():
    model, x = PatchModel(), torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    a = attribute(model, x, np.zeros(3, int), spec("integrated_gradients", 32))
    with torch.no_grad():
        p = torch.softmax(model(x), 1)[:, 0] - torch.softmax(model(torch.zeros_like(x)), 1)[:, 0]
    np.testing.assert_allclose(a.sum((1, 2, 3)), p.numpy(), atol=1e-4)  # completeness


@pytest.mark.parametrize("method", ["gradient_shap", "integrated_gradients"])
def test_a_shard_gets_the_maps_it_would_get_in_one_call(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 3))
    x, y = torch.rand(6, 3, 16, 16), np.array([0, 1, 2, 0, 1, 2])
    whole = attribute(model, x, y, spec(method), seed=3)
    part = attribute(model, x[2:], y[2:], spec(method), seed=3, first_index=2)
    np.testing.assert_allclose(part, whole[2:], atol=1e-6)
    if method == "gradient_shap":
        assert not np.allclose(attribute(model, x, y, spec(method), seed=4), whole)  # the seed matters


def test_the_sharded_stage_path_runs_every_method(tmp_path):
    model = PatchModel()
    x = np.random.default_rng(0).integers(0, 256, (7, 3, 16, 16), dtype=np.uint8)
    y = np.zeros(7, int)
    maps, work = compute_maps(model, x, y, spec("deeplift"), shard_size=3, seed=0, device=torch.device("cpu"),
                              work_root=tmp_path)  # fmt: skip
    direct = attribute(model, torch.from_numpy(x).float() / 255, y, spec("deeplift"))
    np.testing.assert_allclose(maps, direct, atol=1e-6)
    assert len(list(work.glob("shard_*.npy"))) == 3


def test_an_unknown_method_is_one_line():
    with pytest.raises(ImpactXError, match="attribution.method 'lime' is unknown: use one of deeplift"):
        attribute(PatchModel(), torch.rand(1, 3, 16, 16), [0], Spec.default("lime"))
    with pytest.raises(ImpactXError, match=r"attribution.method: Value error, 'lime' is not an attribution method"):
        parse_params({"attribution": {"method": "lime"}})
    with pytest.raises(ImpactXError, match=r"unknown key 'attribution.shap_partition.steps'"):
        parse_params({"attribution": {"shap_partition": {"steps": 3}}})


def test_a_registered_method_gets_its_section_its_cost_and_one_call_shape():
    """What adding an R is: one decorated function with its settings; params.yaml gets attribution.<name>."""
    from impactx.config import Section

    class Settings(Section):
        scale: float = 1.0

    @attribution.register("toy_constant", label="Constant", explainer="a test's constant maps", settings=Settings,
                          cost="scale")  # fmt: skip
    def toy_constant(model, images, targets, options, run):
        return np.full(tuple(images.shape), options.scale * (run.first_index + 1), np.float32)

    try:
        params = parse_params({"attribution": {"method": "toy_constant", "toy_constant": {"scale": "2e0"}}})
        s = Spec.of(params.attribution)
        assert s.describe() == {"method": "toy_constant", "scale": 2.0, "batch_size": 500}
        assert s.attribution.evals(s.options) == 2 and attribution.label(params.attribution) == "Constant of A"
        assert (attribute(PatchModel(), torch.rand(2, 3, 16, 16), [0, 1], s, first_index=1) == 4.0).all()
        with pytest.raises(TypeError, match="cost 'steps' is not a field of NoSettings"):
            attribution.register("bad", label="x", explainer="x", cost="steps")(toy_constant)
    finally:
        attribution.REGISTRY.pop("toy_constant")


def test_a_registered_teacher_is_explained_instead_of_a(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    info = tiny_info(classes=4, size=32)
    teacher_params = parse_params(
        {"model": {"backbone": "mobilenet_v2"}, "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/m.db"}}
    )
    torch.manual_seed(0)
    teacher = methods.build("baseline", Stage1(info, teacher_params.model), teacher_params).eval()
    methods.save(tmp_path / "t.pt", "baseline", teacher_params.baseline, teacher)
    tracking.setup(teacher_params)
    with tracking.stage_run("evaluate", teacher_params):
        tracking.log_model(
            tmp_path / "t.pt", info, teacher_params.model, np.random.rand(1, 3, 32, 32), "toy-mobilenet_v2-baseline"
        )
    student = parse_params({"attribution": {"teacher": "models:/toy-mobilenet_v2-baseline/1"},
                            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/m.db"}})  # lenet5 student  # fmt: skip
    net, what = explained_model(student, info, seed=0)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), teacher(x))  # the teacher's weights and its own normalisation
    assert what == "teacher models:/toy-mobilenet_v2-baseline/1"
    with pytest.raises(
        ImpactXError, match="takes \\(3, 32, 32\\) images of classes .*train the teacher on the same data"
    ):
        explained_model(student, tiny_info(classes=3, size=32), seed=0)
    missing = student.model_copy(
        update={"attribution": student.attribution.model_copy(update={"teacher": "models:/nope/1"})}
    )
    with pytest.raises(ImpactXError, match="attribution.teacher 'models:/nope/1' is not a model this pipeline logged"):
        explained_model(missing, info, seed=0)
