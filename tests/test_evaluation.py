"""One (method, seed) evaluation: same-model faithfulness of its own map, post-hoc SHAP of that model and
random maps, with either removal, and fidelity with its floors."""

import numpy as np
import pytest
import torch
from conftest import CPU, tiny_info, tiny_model

from impactx import methods
from impactx.data import Dataset, Split
from impactx.evaluation import evaluate_run, morf_subset, post_hoc_shap, timed_post_hoc_shap
from impactx.fidelity import agreement
from impactx.methods import Stage1
from impactx.params import parse_params

INFO = tiny_info(size=16)


def tiny_dataset(n=12, k=4) -> Dataset:
    rng = np.random.default_rng(0)
    split = lambda: Split(rng.integers(0, 256, (n, 3, 16, 16), dtype=np.uint8), rng.integers(0, k, n))  # noqa: E731
    return Dataset(split(), split(), split(), INFO)


@pytest.mark.parametrize("removal", ["uniform", "noisy_linear"])
def test_every_model_is_judged_with_its_own_map_shap_of_itself_and_random_maps(tmp_path, removal):
    params = parse_params({"impactx": {"latent_dim": 16},
                           "evaluate": {"morf_images": 6, "steps": 4, "shap_max_evals": 40, "removal": removal}})  # fmt: skip
    ds = tiny_dataset()
    torch.manual_seed(0)
    path = tmp_path / "baseline.pt"
    methods.save(path, "baseline", params.baseline, methods.build("baseline", Stage1(INFO, params.model), params))
    class_maps = np.random.default_rng(1).standard_normal((4, 3, 16, 16))
    teacher = np.random.default_rng(2).standard_normal((6, 3, 16, 16))
    records = {}
    for name in ("baseline", "impactx"):
        stage1 = Stage1(INFO, params.model, path, np.zeros((12, 3, 16, 16), np.float32), ds.train.y)
        model = methods.build(name, stage1, params).eval()
        records[name], fig = evaluate_run(model, methods.get(name), 0, ds, params, CPU, teacher, class_maps)
        n = params.evaluate.figure_images
        assert fig["maps"].shape == fig["shap"].shape == (n, 3, 16, 16) and fig["pred"].shape == (n,)
        if name == "baseline":  # its own map is post-hoc SHAP of A
            assert np.array_equal(fig["maps"], fig["shap"])
    for r in records.values():
        assert r["removal"] == removal and set(r["faithfulness"]) == {"own", "shap", "random"}
        for scores in r["faithfulness"].values():
            assert scores["srg"] == pytest.approx(scores["aopc"] - scores["aopc_lerf"], abs=1e-6)
            assert len(scores["morf_curve"]) == len(scores["lerf_curve"]) == 5
        assert r["aopc"] == r["faithfulness"]["own"]["aopc"] and r["aopc_random"] == r["faithfulness"]["random"]["aopc"]
        assert set(r["fidelity"]) == {"map", "class_mean", "class_mean_pred", "random"}
    base = records["baseline"]["faithfulness"]
    assert base["own"] == base["shap"]  # the baseline's own map is post-hoc SHAP of A
    # a head with a map per class is scored on its served map and, given the true class, on that class's map
    per_class = params.model_copy(update={"impactx": params.impactx.model_copy(update={"decoder_output": "per_class"})})
    stage1 = Stage1(INFO, params.model, path, np.zeros((12, 3, 16, 16), np.float32), ds.train.y)
    torch.manual_seed(0)
    model = methods.build("impactx", stage1, per_class).eval()
    record, _ = evaluate_run(model, methods.get("impactx"), 0, ds, per_class, CPU, teacher, class_maps)
    idx, x = morf_subset(ds, per_class)
    with torch.no_grad():
        given = model.explain(x, torch.from_numpy(ds.test.y[idx]))[1].numpy()
        served = model.explain(x)[1].numpy()
    assert record["fidelity"]["map_given_class"] == agreement(given, teacher)
    assert record["fidelity"]["map"] == agreement(served, teacher) != record["fidelity"]["map_given_class"]
    assert records["impactx"]["faithfulness"]["own"] != records["impactx"]["faithfulness"]["shap"]
    latency = records["impactx"]["latency"]  # morf_images 6: batches of 1 and of the 5 left
    assert [r["images"] for r in latency] == [1, 5] and "latency" not in records["baseline"]
    assert all(r["speedup"] == pytest.approx(r["shap_s"] / r["explain_s"]) and r["explain_s"] > 0 for r in latency)


def test_timed_post_hoc_shap_gives_the_maps_of_one_call():
    params = parse_params({"evaluate": {"shap_max_evals": 40}})
    model, x = tiny_model(), torch.rand(9, 3, 16, 16)
    pred = model(x).argmax(1).numpy()
    maps, seconds = timed_post_hoc_shap(model, x, pred, 0, params, CPU)
    assert list(seconds) == [1, 8] and all(t > 0 for t in seconds.values())
    np.testing.assert_allclose(maps.numpy(), post_hoc_shap(model, x, pred, 0, params, CPU).numpy(), atol=1e-6)
