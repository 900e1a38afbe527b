"""One inference path for forward-only passes, as params.yaml's `inference:` section sets it: torch.compile
(inductor), bfloat16 autocast, channels_last. `prepare(model, settings, device)` returns a module with the
model's call shape (float images N×C×H×W → float32 logits N×K).

- float32 eager (the default) returns the model itself: the values are exactly those of before.
- bfloat16 runs the model under autocast on the device (CPU or CUDA) and returns float32 logits.
- compile uses torch.compile with inductor, its kernels cached in layout.COMPILE_CACHE across processes
  (unless TORCHINDUCTOR_CACHE_DIR names another folder). The compiled graph has one fixed batch shape
  (`batch`, batch_size(device) by default): a call with fewer rows is padded to it, one with more runs in
  chunks of it, so nothing recompiles in a process whatever batches the callers send (the SHAP engine's
  rounds, a loader's last batch). Where compilation fails (no C compiler, an op inductor cannot lower),
  one warning line and the eager model: never a crash."""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from impactx import layout
from impactx.config import InferenceParams

log = logging.getLogger(__name__)


def autocast(device: torch.device | str, settings: InferenceParams):
    """bfloat16 autocast on the device when settings.dtype says so; a no-op context otherwise."""
    kind = device if isinstance(device, str) else device.type
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=settings.dtype == "bfloat16")


class Compiled:
    """fn through torch.compile for fixed shapes (a static graph per input shape), inductor's kernels
    cached in layout.COMPILE_CACHE unless TORCHINDUCTOR_CACHE_DIR names another folder; compiled on the
    first call. If compiling fails (inductor raises many types), one warning line naming `setting`, and
    fn eager from then on; fn's own errors are re-raised by that eager call."""

    def __init__(self, fn, setting: str, enabled: bool = True):
        self.eager, self.setting, self.fn = fn, setting, fn
        if enabled:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(layout.COMPILE_CACHE.resolve()))
            self.fn = torch.compile(fn, dynamic=False)

    @property
    def compiled(self) -> bool:
        return self.fn is not self.eager

    def __call__(self, *args):
        try:
            return self.fn(*args)
        except Exception as e:
            if not self.compiled:
                raise
            log.warning("%s: torch.compile failed (%s: %s); running eager", self.setting, type(e).__name__,
                        str(e).splitlines()[0] if str(e) else "")  # fmt: skip
            self.fn = self.eager
            return self.fn(*args)


def batch_size(device: torch.device) -> int:
    """Rows per forward-only pass: large on a GPU to keep it busy, moderate on a CPU to stay in cache."""
    return 4096 if device.type == "cuda" else 512


class Prepared(nn.Module):
    """The model run as `settings` say; calls fall back to eager for good if the compiled one fails."""

    def __init__(self, model: nn.Module, settings: InferenceParams, device: torch.device, batch: int | None = None):
        super().__init__()
        self.model, self.settings, self.device_type = model, settings, device.type
        self.batch = batch or batch_size(device)  # the compiled graph's rows
        if settings.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = Compiled(self.model, "inference.compile", enabled=settings.compile)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.settings.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device_type, self.settings):
            return (self._in_batches(x) if self.net.compiled else self.model(x)).float()

    def _in_batches(self, x: torch.Tensor) -> torch.Tensor:
        """The compiled model on chunks of exactly self.batch rows, the last padded with copies of its last row."""
        n, b = len(x), self.batch
        if n == b:
            return self.net(x)
        out = []
        for lo in range(0, n, b):
            chunk = x[lo : lo + b]
            if len(chunk) < b:
                chunk = torch.cat([chunk, chunk[-1:].expand(b - len(chunk), *chunk.shape[1:])])
            out.append(self.net(chunk))
        return torch.cat(out)[:n]


def prepare(
    model: nn.Module, settings: InferenceParams | None, device: torch.device | None = None, batch: int | None = None
) -> nn.Module:
    """`model` (in eval mode, on `device`) as `settings` run it; the model itself for float32 eager.
    `batch`: the compiled graph's rows (batch_size(device) if None), to match the caller's batches."""
    if isinstance(model, Prepared):  # prepared once (and compiled once) by a caller that reuses it
        return model
    device = device or next(model.parameters()).device
    model = model.to(device).eval()
    if settings is None or settings.exact:
        return model
    return Prepared(model, settings, device, batch).eval()
