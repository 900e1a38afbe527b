"""Why does IMPACTX's decoder agree with its SHAP target no better than a class-mean map? (issue 12, item 4)

On one seed's stage 1 of a pipeline that has run (its data/prepared and models/baseline/seed<seed>.pt),
this trains IMPACTX variants on a seeded subset of the training images and scores each decoder map
against SHAP of A for the true class, on the held-out MoRF images (and on training images, to separate
fitting from generalising), next to four floors: the class-mean training map of the true class (an
oracle), of the predicted class, WAE's map (the class means weighted by A's probabilities) and a random
map. Variants change one thing each:

    paper          D(z) as the paper draws it (decoder_input: raw), max_abs targets (r / max|r|, tanh
                   decoder), λ = 1, decoder width 64, MSE
    lambda30       the same with λ = 30: the MSE of max_abs targets is about 1/30 of the CE
    standardize    (r − mean)/std per image, linear decoder, λ = 1: the MSE on the CE's scale
    width256       decoder width 256
    pearson        map loss 1 − per-image Pearson correlation instead of the MSE
    evals2000      targets from SHAP at 2000 evaluations instead of 500 (same images)
    layernorm      D(LayerNorm(z)), the package's default; otherwise the paper's settings
    layernorm_standardize, layernorm_evals2000   the same with standardized or 2000-evaluation targets

and the explanation heads of issue 25, each one change to the package's default (layernorm):

    spatial        D(z, s, x): z with the LEP's stem features and the image (decoder: spatial)
    spatial_m      the same with frozen M's stem features (decoder_skip: m)
    prior          D(z) plus a learned map per class mixed by A's probabilities (decoder_prior: class)
    spatial_prior  both
    per_class, prior_per_class, spatial_prior_per_class   a map per class (decoder_output: per_class), without
                   and with the class prior and the spatial decoder; scored also with the true class given
                   (its map of that class), against the oracle floor that is given the label too

Each variant is also scored on held-out *validation* images (SHAP of A for the true class of a seeded
subset of the validation split, as many as the test images): the choice between variants is made there,
never on the test images. --pipeline-maps trains on the pipeline's own attribution maps of the seed
(attribution/seed<seed>/maps.npy, the stage-2 targets) instead of computing SHAP of the subset.

Run from the project root of a pipeline on CIFAR-10 (its recipes: studies/recipes/decoder_*.yaml; results:
docs/results/decoder_study_seed1.md); SHAP maps are cached in .study_work/ (resumable), results written to --out as JSON:

    python studies/decoder_fidelity.py --seed 0 --train-images 10000 --epochs 15 --out studies/results/decoder_study_seed1.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path.cwd()))  # the project's impactx, like the stages

from impactx import data, layout, methods  # noqa: E402
from impactx.attribution import Spec, attribute  # noqa: E402
from impactx.compare import paired  # noqa: E402
from impactx.data import Split, to_float  # noqa: E402
from impactx.evaluation import explain_batched, morf_subset  # noqa: E402
from impactx.fidelity import agreement, per_map_pearson  # noqa: E402
from impactx.io import save_json  # noqa: E402
from impactx.maps import class_mean_maps, load_scaled_maps, scale_maps  # noqa: E402
from impactx.methods.impactx import ImpactxParams, build_impactx  # noqa: E402
from impactx.params import load_params  # noqa: E402
from impactx.shards import compute_maps  # noqa: E402
from impactx.study import head_commit  # noqa: E402
from impactx.train import predict_logits, resolve_device, seed_everything, train_model  # noqa: E402

RAW = {"decoder_input": "raw"}  # D(z) as the paper draws it; the default is D(LayerNorm(z))
VARIANTS = {  # name: (ImpactxParams changes, SHAP evaluations of the targets)
    "paper": (RAW, 500),
    "lambda30": (RAW | {"lambda": 30.0}, 500),
    "standardize": (RAW | {"target": "standardize"}, 500),
    "width256": (RAW | {"decoder_width": 256}, 500),
    "pearson": (RAW | {"map_loss": "pearson"}, 500),
    "evals2000": (RAW, 2000),
    "layernorm": ({}, 500),
    "layernorm_standardize": ({"target": "standardize"}, 500),
    "layernorm_evals2000": ({}, 2000),
    "spatial": ({"decoder": "spatial"}, 500),
    "spatial_m": ({"decoder": "spatial", "decoder_skip": "m"}, 500),
    "prior": ({"decoder_prior": "class"}, 500),
    "spatial_prior": ({"decoder": "spatial", "decoder_prior": "class"}, 500),
    "per_class": ({"decoder_output": "per_class"}, 500),
    "prior_per_class": ({"decoder_prior": "class", "decoder_output": "per_class"}, 500),
    "spatial_prior_per_class": ({"decoder": "spatial", "decoder_prior": "class", "decoder_output": "per_class"}, 500),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-images", type=int, default=10000, help="seeded subset of the training split")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--pipeline-maps", action="store_true", help="targets: the pipeline's maps of --seed (500 evals)")
    ap.add_argument("--out", default="metrics/decoder_study.json")
    ap.add_argument("--keep", action="store_true", help="keep --out's other variants (each says its commit)")
    ap.add_argument("--capacity", action="store_true", help="the decoder-alone diagnostics instead (see capacity)")
    args = ap.parse_args()

    torch.set_flush_denormal(True)  # as the stages do (impactx.stage.run_stage)
    params = load_params()
    device = resolve_device(params.device)
    ds = data.load(layout.PREPARED)
    _, a = methods.load(layout.model("baseline", args.seed), ds.info, params.model)
    rng = np.random.default_rng(args.seed)
    sub = np.sort(rng.permutation(len(ds.train.y))[: args.train_images])
    train = Split(ds.train.x[sub], ds.train.y[sub])
    k = ds.info.num_classes

    maps: dict[int, np.ndarray] = {}

    def shap_at(evals: int) -> Spec:  # attribution.shap_partition of params.yaml at `evals` evaluations
        options = params.attribution.shap_partition.model_copy(update={"max_evals": evals})
        return Spec("shap_partition", options, params.attribution.batch_size)

    def targets(evals: int) -> np.ndarray:  # SHAP of the subset at `evals`, computed on first use (resumable)
        if evals not in maps and args.pipeline_maps:
            if evals != params.attribution.shap_partition.max_evals:
                raise SystemExit(f"--pipeline-maps: the pipeline's maps are at {evals} evaluations; drop the variant")
            maps[evals] = load_scaled_maps(layout.attribution_maps(args.seed))[sub]
        if evals not in maps:
            t0 = time.time()
            raw, _ = compute_maps(
                a, train.x, train.y, shap_at(evals), shard_size=params.shards.size, seed=args.seed, device=device,
                work_root=Path(".study_work"),
            )  # fmt: skip
            maps[evals] = scale_maps(raw)
            print(
                f"study: SHAP of {len(sub)} training images at {evals} evaluations: {time.time() - t0:.0f} s",
                flush=True,
            )
        return maps[evals]

    idx, x_test = morf_subset(ds, params)
    y_test = ds.test.y[idx]
    teacher_path = layout.teacher_maps(args.seed)
    if teacher_path.exists():
        teacher = np.load(teacher_path)
    else:
        shap = params.attribution.shap_partition
        teacher = attribute(a, x_test, y_test, shap_at(shap.max_evals), seed=args.seed, device=device)
    val_idx = np.sort(np.random.default_rng(args.seed).permutation(len(ds.val.y))[: len(idx)])
    x_val, y_val = to_float(ds.val.x[val_idx]), ds.val.y[val_idx]
    teacher_val = attribute(a, x_val, y_val, shap_at(params.attribution.shap_partition.max_evals), seed=args.seed,
                            device=device)  # fmt: skip
    probe = np.sort(rng.permutation(len(sub))[: len(idx)])  # training images, to see what was fitted
    x_probe = to_float(train.x[probe])

    results = {
        "seed": args.seed,
        "train_images": len(sub),
        "epochs": args.epochs,
        "test_images": len(idx),
        "variants": {},
    }
    if args.keep and Path(args.out).exists():  # the variants of an earlier run (same seed and subset)
        earlier = json.loads(Path(args.out).read_text())
        results["variants"] = {k: v for k, v in earlier.get("variants", {}).items() if k not in args.variants}
    class_of = lambda evals: class_mean_maps(targets(evals), train.y, k).numpy()  # noqa: E731
    class_maps = class_of(500)
    p_test, p_val = (predict_logits(a, x, device).softmax(1).numpy() for x in (x_test, x_val))
    a_pred, a_pred_val = p_test.argmax(1), p_val.argmax(1)
    weighted = lambda p: np.einsum("nk,kchw->nchw", p, class_maps)  # noqa: E731  WAE's e(x): Σ_k p_k·S_k
    results["floors_val"] = {
        "class_mean": agreement(class_maps[y_val], teacher_val),
        "class_mean_pred_A": agreement(class_maps[a_pred_val], teacher_val),
        "class_mean_weighted_A": agreement(weighted(p_val), teacher_val),
    }
    results["floors"] = {
        "class_mean": agreement(class_maps[y_test], teacher),
        "class_mean_pred_A": agreement(class_maps[a_pred], teacher),
        "class_mean_weighted_A": agreement(weighted(p_test), teacher),
        "global_mean": agreement(np.repeat(targets(500).mean(0, keepdims=True), len(idx), 0), teacher),
        "random": agreement(np.random.default_rng(0).random(teacher.shape), teacher),
    }
    print("study: floors on held-out images:", json.dumps(results["floors"]), flush=True)
    if args.capacity:
        results["capacity"] = capacity(a, ds, params, train, targets(500), probe, x_test, teacher, args.seed)
        save_json(Path(args.out), results)
        print(json.dumps(results["capacity"], indent=1))
        return
    for name in sorted(args.variants, key=lambda v: VARIANTS[v][1]):  # the cheaper targets first
        change, evals = VARIANTS[name]
        settings = ImpactxParams.model_validate(
            params.impactx.model_dump(by_alias=True) | {"epochs": args.epochs} | change
        )
        seed_everything(args.seed)
        model = build_impactx(stage1_of(ds, params, args.seed), settings)
        t0 = time.time()
        run = train_model(model, train, ds.val, settings, device, args.seed, recipe=params.recipe,
                          maps=torch.from_numpy(targets(evals)), desc=f"study {name}")  # fmt: skip
        pred, own = explain_batched(model, x_test, device)
        _, own_probe = explain_batched(model, x_probe, device)
        _, own_val = explain_batched(model, x_val, device)
        hist = run["history"]
        res = {
            "settings": change,
            "commit": head_commit(),
            "target_evals": evals,
            "seconds": round(time.time() - t0, 1),
            "val_accuracy": run["best_val_accuracy"],
            "map_loss_first_last": [hist[0][f"train_{settings.map_loss}"], hist[-1][f"train_{settings.map_loss}"]],
            "val": agreement(own_val.numpy(), teacher_val),
            "test": agreement(own.numpy(), teacher),
            "test_class_mean_pred": agreement(class_of(evals)[pred.numpy()], teacher),
            "train": agreement(own_probe.numpy(), maps[evals][probe]),
            "train_class_mean": agreement(class_of(evals)[train.y[probe]], maps[evals][probe]),
            # paired over the held-out images (one seed: an interval over images, not over seeds)
            "test_minus_floors_per_image": {
                "class_mean_pred": by_image(own.numpy(), class_of(evals)[pred.numpy()], teacher),
                "class_mean_weighted_A": by_image(own.numpy(), weighted(p_test), teacher),
                "class_mean": by_image(own.numpy(), class_maps[y_test], teacher),
            },
        }
        if model.per_class:  # its map of the true class, against the floor that is given the label too
            given_val = explain_batched(model, x_val, device, y_val)[1].numpy()
            given = explain_batched(model, x_test, device, y_test)[1].numpy()
            res["val_given_class"] = agreement(given_val, teacher_val)
            res["test_given_class"] = agreement(given, teacher)
            res["test_minus_floors_per_image"]["given_class_minus_class_mean"] = by_image(
                given, class_maps[y_test], teacher
            )
        results["variants"][name] = res
        print(f"study {name}: " + json.dumps(res), flush=True)
        save_json(Path(args.out), {**results, "rows": rows(results)})
    print(table(results))


def capacity(a, ds, params, train: Split, maps: np.ndarray, probe, x_test, teacher, seed: int) -> dict:
    """The decoder alone (Adam, lr 0.001, batch 64, MSE on max_abs targets), on fixed inputs: what it can
    fit on the training images (probe, no augmentation, 940 steps) and what of it holds on held-out images
    (1,880 steps, with and without the recipe's augmentation). Inputs: the one-hot true class; z of an
    untrained LEP (a copy of A with a fresh FC(512) + sigmoid), raw and through a LayerNorm; A's
    penultimate features."""
    from torch import nn
    from torch.nn import functional as F

    from impactx.methods.impactx import Decoder
    from impactx.train import augment

    seed_everything(seed)
    imp = build_impactx(stage1_of(ds, params, seed), ImpactxParams())
    x, r = to_float(train.x), torch.from_numpy(maps)
    onehot = lambda idx, xb: F.one_hot(torch.from_numpy(train.y[idx]), ds.info.num_classes).float()  # noqa: E731
    z = lambda idx, xb: imp.lep(imp.normalize(xb))  # noqa: E731
    ln = nn.LayerNorm(imp.lep.head[0].out_features, elementwise_affine=False)
    z_ln = lambda idx, xb: ln(z(idx, xb))  # noqa: E731
    feats = lambda idx, xb: imp.m.trunk(imp.m.stem(imp.normalize(xb)))  # noqa: E731

    def fit(encode, steps: int, aug: bool):
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            width = encode(np.arange(2), x[:2]).shape[1]
        dec = Decoder(width, maps.shape[1], maps.shape[2], normalize_input=False)
        opt = torch.optim.Adam(dec.parameters(), 1e-3)
        for _ in range(steps):
            i = torch.randint(0, len(x), (64,), generator=g)
            xb, rb = augment(x[i], r[i], params.recipe, g) if aug else (x[i], r[i])
            with torch.no_grad():
                code = encode(i.numpy(), xb)
            loss = F.mse_loss(dec(code), rb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return dec

    out = {}
    for name, enc in (("onehot_y", onehot), ("z_raw", z), ("z_layernorm", z_ln), ("A_features", feats)):
        dec = fit(enc, 940, aug=False)
        with torch.no_grad():
            out[f"train_fit_{name}"] = agreement(dec(enc(probe, x[probe])).numpy(), maps[probe])["pearson"]
        print(f"capacity: D({name}) on training images: {out[f'train_fit_{name}']:.3f}", flush=True)
    for aug in (False, True):
        dec = fit(z_ln, 1880, aug=aug)
        key = f"held_out_z_layernorm_{'aug' if aug else 'no_aug'}"
        with torch.no_grad():
            out[key] = agreement(dec(z_ln(None, x_test)).numpy(), teacher)["pearson"]
        print(f"capacity: {key}: {out[key]:.3f}", flush=True)
    return out


FLOORS = {"class_mean": "floor: class mean of the true class (oracle)",
          "class_mean_pred_A": "floor: class mean of A's predicted class",
          "class_mean_weighted_A": "floor: WAE's map, class means weighted by A's probabilities"}  # fmt: skip


def rows(results: dict) -> list[dict]:
    """The results page's table: Pearson with SHAP of A (true class) of each floor and variant, on the
    validation images (where the choice is made) and the held-out test images, and each variant's per-image
    paired difference with the floors (mean ± 95% half-width over the test images)."""
    fv, ft = results.get("floors_val", {}), results["floors"]
    out = [{"map": label, "val Pearson": fv[k]["pearson"] if k in fv else "", "test Pearson": ft[k]["pearson"]}
           for k, label in FLOORS.items() if k in ft]  # fmt: skip
    for name, r in results["variants"].items():
        row = {"map": name, "settings": ", ".join(f"{k}: {v}" for k, v in r["settings"].items()) or "the default: D(LayerNorm(z))",
               "val Pearson": r["val"]["pearson"] if "val" in r else "", "test Pearson": r["test"]["pearson"]}  # fmt: skip
        if "test_given_class" in r:
            row |= {"val Pearson, its map of the true class": r["val_given_class"]["pearson"],
                    "test Pearson, its map of the true class": r["test_given_class"]["pearson"]}  # fmt: skip
        for k, d in r.get("test_minus_floors_per_image", {}).items():
            if k == "given_class_minus_class_mean":
                row["test, its map of the true class − class mean of the true class (oracle)"] = (
                    f"{d['mean']:+.3f} ± {d['ci95']:.3f}"
                )
                continue
            floor = FLOORS.get(k, "floor: class mean of the model's own predicted class").removeprefix("floor: ")
            row[f"test − {floor}"] = f"{d['mean']:+.3f} ± {d['ci95']:.3f}"
        row |= {"val accuracy": r["val_accuracy"], "seconds": r["seconds"]}
        out.append(row)
    return out


def by_image(maps: np.ndarray, floor: np.ndarray, teacher: np.ndarray) -> dict:
    """Per-image Pearson with the teacher of `maps` minus that of `floor`: mean and 95% t half-width."""
    a, b = per_map_pearson(maps, teacher), per_map_pearson(floor, teacher)
    return paired(dict(enumerate(a)), dict(enumerate(b)))


def stage1_of(ds, params, seed) -> methods.Stage1:
    """Stage 1 of `seed` for build_impactx: each variant gets its own fresh copy of A (IMPACTX freezes and wraps it)."""
    return methods.Stage1(ds.info, params.model, layout.model("baseline", seed))


def table(results: dict) -> str:
    f, fv = results["floors"], results.get("floors_val")
    lines = [
        f"Pearson with SHAP of A (true class), seed {results['seed']}, {results['train_images']} training images,"
        f" {results['epochs']} epochs; held-out: {results['test_images']} test images",
        f"floors (held-out): true-class mean {f['class_mean']['pearson']:.3f}, A's predicted-class mean"
        f" {f['class_mean_pred_A']['pearson']:.3f}"
        + (f", WAE's weighted mean {f['class_mean_weighted_A']['pearson']:.3f}" if "class_mean_weighted_A" in f else "")
        + f", random {f['random']['pearson']:.3f}",
    ]
    if fv:
        lines.append(f"floors (validation): true-class mean {fv['class_mean']['pearson']:.3f}, A's predicted-class"
                     f" mean {fv['class_mean_pred_A']['pearson']:.3f}")  # fmt: skip
    lines += [
        "| variant | validation: D(LEP(x)) | held-out: D(LEP(x)) | held-out: its predicted-class mean | train: D(LEP(x)) | train: true-class mean | map loss first → last | val acc |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results["variants"].items():
        lo, hi = r["map_loss_first_last"]
        val = f"{r['val']['pearson']:.3f}" if "val" in r else "-"
        lines.append(
            f"| {name} | {val} | {r['test']['pearson']:.3f} | {r['test_class_mean_pred']['pearson']:.3f} | "
            f"{r['train']['pearson']:.3f} | {r['train_class_mean']['pearson']:.3f} | {lo:.4f} → {hi:.4f} | {r['val_accuracy']:.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
