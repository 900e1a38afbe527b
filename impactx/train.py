"""Training loops: stage 1 trains the baseline A, stage 2 trains LEP, D and C with M frozen.
Both keep the weights of the best validation epoch and report every epoch through `on_epoch`."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from impactx import ImpactXError
from impactx.config import ImpactxParams, TrainParams
from impactx.data import Split, to_float
from impactx.model import impactx_loss


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


def inference_batch_size(device: torch.device) -> int:
    """Forward-only batch size: large on a GPU to keep it busy, moderate on CPU to stay in cache."""
    return 4096 if device.type == "cuda" else 512


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_loader(split: Split, batch_size: int, device: torch.device, *extra, shuffle: bool, seed: int = 0):
    tensors = [to_float(split.x), torch.from_numpy(split.y), *extra]
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(*tensors), batch_size=batch_size, shuffle=shuffle, generator=g, pin_memory=device.type == "cuda"
    )


@torch.no_grad()
def predict_logits(model, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    model.to(device).eval()
    bs = inference_batch_size(device)
    return torch.cat([model(x[i : i + bs].to(device, non_blocking=True)).float().cpu() for i in range(0, len(x), bs)])


def accuracy(model, split: Split, device: torch.device) -> float:
    from sklearn.metrics import accuracy_score

    pred = predict_logits(model, to_float(split.x), device).argmax(1).numpy()
    return float(accuracy_score(split.y, pred))


EpochHook = Callable[[int, dict], None]


def _fit(model, params, train_loader, val_split, device, step, on_epoch: EpochHook | None, desc: str):
    opt = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=params.lr, weight_decay=params.weight_decay
    )
    best_acc, best_state, history = -1.0, None, []
    for epoch in range(1, params.epochs + 1):
        model.train()
        sums, n = {}, 0
        for batch in tqdm(
            train_loader, desc=f"{desc} epoch {epoch}/{params.epochs}", leave=False, mininterval=2, disable=None
        ):
            batch = [t.to(device, non_blocking=True) for t in batch]
            losses = step(model, *batch)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
            bsz = len(batch[0])
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * bsz
            n += bsz
        metrics = {f"train_{k}": v / n for k, v in sums.items()}
        metrics["val_accuracy"] = accuracy(model, val_split, device)
        history.append(metrics)
        if on_epoch:
            on_epoch(epoch, metrics)
        print(f"{desc} epoch {epoch}: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)
        if metrics["val_accuracy"] > best_acc:
            best_acc, best_state = metrics["val_accuracy"], copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return {"best_val_accuracy": best_acc, "epochs": params.epochs, "history": history}


def _classifier_step(model, x, y):
    return {"loss": F.cross_entropy(model(x), y)}


def train_classifier(
    model, train: Split, val: Split, params: TrainParams, device, seed: int, on_epoch: EpochHook | None = None
) -> dict:
    """Stage 1: fine-tune A with cross-entropy."""
    seed_everything(seed)
    model.to(device)
    loader = make_loader(train, params.batch_size, device, shuffle=True, seed=seed)
    return _fit(model, params, loader, val, device, _classifier_step, on_epoch, "finetune")


def train_impactx(
    model,
    train: Split,
    maps: torch.Tensor,
    val: Split,
    params: ImpactxParams,
    device,
    seed: int,
    on_epoch: EpochHook | None = None,
) -> dict:
    """Stage 2: train LEP, D and C on CE + λ·MSE against the scaled SHAP maps of the training images."""
    seed_everything(seed)
    model.to(device)
    loader = make_loader(train, params.batch_size, device, maps, shuffle=True, seed=seed)

    def step(model, x, y, r):
        logits, r_hat = model.explain(x)
        loss, ce, mse = impactx_loss(logits, y, r_hat, r, params.lambda_)
        return {"loss": loss, "ce": ce, "mse": mse}

    return _fit(model, params, loader, val, device, step, on_epoch, "impactx")
