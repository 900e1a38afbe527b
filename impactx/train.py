"""One training loop for every model (baseline A, IMPACTX, ABN, WAE): each owns its loss, model.loss(x, y, r).
It keeps the weights of the best validation epoch and reports every epoch through `on_epoch`. The step runs
as params.yaml's `training:` says (Step: compiled, bfloat16 autocast, channels_last); the validation
accuracy that picks the epoch is always the eager float32 model's."""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset
from tqdm.auto import tqdm

from impactx import ImpactXError, inference
from impactx.config import RecipeParams, TrainingParams, TrainParams
from impactx.data import Split, to_float

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ImpactXError(f"device '{name}' is not a torch device: use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ImpactXError(f"device '{name}' asked for but CUDA is not available: set device: auto or cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_loader(split: Split, batch_size: int, device: torch.device, *extra, shuffle: bool, seed: int = 0):
    """Whole batches sliced from in-memory tensors (one index op per batch, no per-image collate). The
    order comes from `seed` alone: the sampler owns the generator."""
    dataset = TensorDataset(to_float(split.x), torch.from_numpy(split.y), *extra)
    g = torch.Generator().manual_seed(seed)
    order = RandomSampler(dataset, generator=g) if shuffle else SequentialSampler(dataset)
    batches = BatchSampler(order, batch_size, drop_last=False)
    return DataLoader(dataset, sampler=batches, batch_size=None, pin_memory=device.type == "cuda")


@torch.no_grad()
def predict_logits(model, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    model.to(device).eval()
    bs = inference.batch_size(device)
    return torch.cat([model(x[i : i + bs].to(device, non_blocking=True)).float().cpu() for i in range(0, len(x), bs)])


def accuracy(model, split: Split, device: torch.device) -> float:
    """Fraction of correct argmax predictions (plain numpy: importing sklearn.metrics took 1.2 s a stage)."""
    pred = predict_logits(model, to_float(split.x), device).argmax(1).numpy()
    return float((pred == split.y).mean())


EpochHook = Callable[[int, dict], None]


def augment(x: torch.Tensor, r: torch.Tensor | None, recipe: RecipeParams, gen: torch.Generator):
    """The same random crop (after zero padding) and horizontal flip for each image x (N×C×H×W) and its
    map r: a map stays the explanation of its image."""
    n, _, h, w = x.shape
    out = [x] if r is None else [x, r]
    if recipe.crop_padding:
        p = recipe.crop_padding
        dy, dx = (torch.randint(0, 2 * p + 1, (n,), generator=gen).to(x.device) for _ in range(2))
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # N×H×1
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # N×1×W
        idx = torch.arange(n, device=x.device)[:, None, None]
        out = [F.pad(t, (p, p, p, p))[idx, :, rows, cols].permute(0, 3, 1, 2) for t in out]  # N×H×W×C → N×C×H×W
    if recipe.flip:
        flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)[:, None, None, None]
        out = [torch.where(flip, t.flip(-1), t) for t in out]
    return out[0], (out[1] if r is not None else None)


class Step:
    """model.loss(x, y, r) as `settings` run it. compile: the loss and its backward through torch.compile
    (one static graph per batch shape: the full batches and the last one); bfloat16: under autocast (the
    weights, their gradients and Adam stay float32); channels_last: the images and weights in NHWC. A
    compile that fails gives one warning line and the eager loss, never a crash."""

    def __init__(self, model, settings: TrainingParams, device: torch.device):
        self.settings, self.device = settings, device
        if settings.channels_last:
            model.to(memory_format=torch.channels_last)
        self.loss = inference.Compiled(model.loss, "training.compile", enabled=settings.compile)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, r: torch.Tensor | None) -> dict:
        if self.settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with inference.autocast(self.device, self.settings):
            return self.loss(x, y, r)


def param_groups(model, weight_decay: float) -> list[dict]:
    """The trainable parameters, with weight decay except those the model names in no_weight_decay() (timm's
    convention): a table of maps, such as IMPACTX's class prior, whose map-loss gradient is far smaller than
    any decay would be."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay, free = [p for n, p in named if n not in skip], [p for n, p in named if n in skip]
    return [{"params": decay, "weight_decay": weight_decay}] + ([{"params": free, "weight_decay": 0.0}] if free else [])


def _fit(model, params, recipe: RecipeParams, train_loader, val_split, device, seed, on_epoch, desc: str, refresh=None,
         engine: TrainingParams | None = None):  # fmt: skip
    opt = torch.optim.Adam(param_groups(model, params.weight_decay), lr=params.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, params.epochs) if recipe.schedule == "cosine" else None
    gen = torch.Generator().manual_seed(seed + 1)  # augmentation draws: their own stream, from the seed
    best_acc, best_epoch, best_state, history = -1.0, 0, None, []
    step = Step(model, engine or TrainingParams(), device)
    for epoch in range(1, params.epochs + 1):
        t0 = time.perf_counter()
        refresh_s = refresh(epoch) if refresh is not None else None  # single-stage: new maps first
        model.train()
        sums: dict[str, float] = {}
        n = 0
        for batch in tqdm(
            train_loader, desc=f"{desc} epoch {epoch}/{params.epochs}", leave=False, mininterval=2, disable=None
        ):
            x, y, *r = (t.to(device, non_blocking=True) for t in batch)  # r: the maps, when the method has them
            x, r = augment(x, r[0] if r else None, recipe, gen)
            losses = step(x, y, r)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
            bsz = len(x)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * bsz
            n += bsz
        metrics = {f"train_{k}": v / n for k, v in sums.items()}
        metrics["lr"] = opt.param_groups[0]["lr"]
        metrics["val_accuracy"] = accuracy(model, val_split, device)
        metrics["epoch_seconds"] = time.perf_counter() - t0
        if refresh_s is not None:
            metrics["refresh_seconds"] = refresh_s
        if sched is not None:
            sched.step()
        history.append(metrics)
        if on_epoch:
            on_epoch(epoch, metrics)
        log.info("%s epoch %d: %s", desc, epoch, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if metrics["val_accuracy"] > best_acc:
            best_acc, best_epoch, best_state = metrics["val_accuracy"], epoch, copy.deepcopy(model.state_dict())
        if recipe.patience and epoch - best_epoch >= recipe.patience:
            log.info("%s: no better validation accuracy for %d epochs: stopped at %d", desc, recipe.patience, epoch)
            break
    model.load_state_dict(best_state)
    return {"best_val_accuracy": best_acc, "best_epoch": best_epoch, "epochs_run": epoch, "history": history}


def train_model(
    model,
    train: Split,
    val: Split,
    params: TrainParams,
    device,
    seed: int,
    recipe: RecipeParams | None = None,
    maps: torch.Tensor | None = None,
    on_epoch: EpochHook | None = None,
    desc: str = "train",
    engine: TrainingParams | None = None,
) -> dict:
    """Adam on the trainable parameters, with the recipe's augmentation, schedule and early stopping (none
    by default); model.loss(x, y, r) returns the losses of one batch, "loss" first. With `maps`, each
    batch also carries the SHAP maps r of its images, augmented with them. A model with refresh_maps
    (single-stage IMPACTX) replaces them at the start of an epoch when it returns new ones. The best
    validation epoch's weights are kept. `engine`: params.yaml's `training:` (float32 eager if None)."""
    seed_everything(seed)
    model.to(device)
    if maps is not None and hasattr(model, "training_maps"):
        maps = model.training_maps(maps, train.y, seed)  # the shuffled-maps controls pair them with other images
    extra = () if maps is None else (maps,)
    loader = make_loader(train, params.batch_size, device, *extra, shuffle=True, seed=seed)
    refresh = None
    if maps is not None and hasattr(model, "refresh_maps"):
        images = to_float(train.x)

        def refresh(epoch: int) -> float | None:
            t0 = time.perf_counter()
            new = model.refresh_maps(epoch, images, train.y, device)
            if new is None:
                return None
            maps.copy_(new)  # the loader's tensor: the next batches carry the new maps
            model.to(device)
            seconds = time.perf_counter() - t0
            log.info("%s epoch %d: maps refreshed from the current model in %.1fs", desc, epoch, seconds)
            return seconds

    return _fit(model, params, recipe or RecipeParams(), loader, val, device, seed, on_epoch, desc, refresh, engine)
