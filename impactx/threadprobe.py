"""Whether this machine's forward passes give the same bytes at any thread count: the condition for a CPU
worker slot (flows/pipeline.py) to give a `threads: split` stage fewer threads than a sequential
`dvc repro` would, with the same outputs.

It is a property of the CPU and the math libraries, not of the code: on one Intel Xeon every forward pass
of the default pipeline was thread-invariant; on an AMD EPYC with the same torch wheel, a Linear layer
of 84 inputs and 10 outputs over 7 rows (a ragged last batch) gave other last bits at 1 thread than at 2,
even with MKL's strict reproducible mode (impactx.stage.MKL_CBWR), and so did the baseline's post-hoc SHAP
maps in a 2-slot run (measured: benchmarks/workers.py). So the flow asks the machine: `python -m impactx.threadprobe` prints a digest of the
forward passes of the configured backbone (random weights, ragged and round batch sizes, eval mode) and
of numpy products of the same shapes, and the flow compares the digests of one thread and of the
sequential count. Equal digests cannot prove every input invariant; different ones prove that some are
not, and then no stage is split."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

BATCHES = (1, 2, 3, 5, 7, 9, 13, 17, 31, 33, 64, 100)  # ragged last batches and round ones
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")  # every pool a stage may start


def digest(backbone: str = "lenet5", channels: int = 3, size: int = 32, classes: int = 10) -> str:
    """md5 of the eval-mode forward passes of `backbone` (seeded random weights) over BATCHES, and of
    numpy float32 and float64 products of ragged shapes, at this process's thread counts."""
    import numpy as np
    import torch

    from impactx.backbones import build_backbone
    from impactx.config import ModelParams

    torch.manual_seed(0)
    model = build_backbone(backbone, channels, classes, size, ModelParams(backbone=backbone)).eval()
    rng = np.random.default_rng(0)
    h = hashlib.md5()
    with torch.no_grad():
        for n in BATCHES:
            x = torch.from_numpy(rng.random((n, channels, size, size), dtype=np.float32))
            h.update(model(x).numpy().tobytes())
    for dtype in (np.float32, np.float64):
        for n in BATCHES:
            h.update((rng.random((n, 84)).astype(dtype) @ rng.random((84, 500)).astype(dtype)).tobytes())
    return h.hexdigest()


def invariant(threads: int, backbone: str = "lenet5", cwd: Path | None = None) -> bool:
    """Whether the digest at 1 thread equals the digest at `threads` (each in its own process, every thread
    pool set), for `backbone`. True at once for threads <= 1."""
    if threads <= 1:
        return True
    found = set()
    for n in (1, threads):
        env = {**os.environ, **dict.fromkeys(THREAD_VARS, str(n))}
        out = subprocess.run([sys.executable, "-m", "impactx.threadprobe", backbone], cwd=cwd, env=env,
                             capture_output=True, text=True, check=True)  # fmt: skip
        found.add(out.stdout.strip())
    return len(found) == 1


if __name__ == "__main__":
    from impactx.stage import MKL_CBWR

    os.environ.setdefault(*MKL_CBWR)  # as in every stage, before MKL's first call
    print(digest(sys.argv[1] if len(sys.argv) > 1 else "lenet5"))
