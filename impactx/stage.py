"""Shared entry-point plumbing for the stages: their arguments, and bad input as one line on stderr
with exit code 2.

Exit code 2 tells an orchestrator (flows/pipeline.py) not to retry: the same input fails the same way.
Stages run as `python -m stages.<name>` from the project root, so they import this checkout's impactx."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from impactx import ImpactXError

BAD_INPUT = 2
MKL_CBWR = ("MKL_CBWR", "AUTO,STRICT")  # MKL's results the same at any thread count (run_stage)


def run_stage(main) -> None:
    """Run a stage's main: bad input is one line and exit 2. Subnormal floats are flushed to zero: L2
    weight decay leaves weights below 1.2e-38, and on x86 CPUs each operation on one costs about a hundred
    times a normal one. Measured on CIFAR-10 LeNet-5 checkpoints (60 epochs, weight decay 5e-4), one
    thread: 727 against 8,934 images/s forward (seed 0), 4,385 against 8,565 (seed 1). The values they
    stand for are below 1e-38, so results change by nothing a float32 can show.

    MKL's matrix products are made independent of the thread count (its strict conditional numerical
    reproducibility, read at its first call): with a few rows, MKL splits the sum over threads, so one
    LeNet-5 forward pass of 8 images gave other bits with 1 thread than with 2, and a worker slot that
    runs a `threads: split` stage with fewer threads (flows/pipeline.py) would write other outputs than a
    sequential `dvc repro`. Measured cost: none (LeNet-5 forward and training, 2-core Xeon)."""
    import torch

    os.environ.setdefault(MKL_CBWR[0], MKL_CBWR[1])
    show_progress()
    torch.set_flush_denormal(True)  # a no-op (returns False) on CPUs without the instruction
    try:
        main()
    except ImpactXError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(BAD_INPUT)
    _exit_now()


def show_progress(level: int = logging.INFO) -> None:
    """The package's log lines ("impactx.*") on stdout, as plain lines: DVC and Prefect show a stage's
    stdout, and a user who runs a stage by hand reads the same."""
    logger = logging.getLogger("impactx")
    if not any(getattr(h, "impactx_stage", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.impactx_stage = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(level)


def _exit_now() -> None:
    """Skip the interpreter's teardown once a stage has written everything: with torch and MLflow loaded
    it took 0.9 s a stage here. Every output is already closed and renamed (impactx.io) and every MLflow
    run ended; Prefect (the Dask fan-out) keeps its normal exit, which stops what it started."""
    if "prefect" in sys.modules:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def stage_args(description: str, method: bool = False, seed: bool = True) -> argparse.Namespace:
    """`<stage> [method] [seed]` when run by hand (`python -m stages.train impactx 0`). Under DVC, with no
    arguments, they come from the stage's name (DVC_STAGE: baseline@0, train@impactx-0, evaluate@abn):
    dvc.yaml's commands interpolate no params value, so none of them reaches a shell."""
    ap = argparse.ArgumentParser(description=description)
    if method:
        ap.add_argument("method")
    if seed:
        ap.add_argument("seed", type=int)
    argv = sys.argv[1:]
    if not argv and os.environ.get("DVC_STAGE"):
        argv = stage_argv(os.environ["DVC_STAGE"], method, seed)
    return ap.parse_args(argv)


def stage_argv(stage: str, method: bool = True, seed: bool = True) -> list[str]:
    """A foreach/matrix stage's arguments from its name: baseline@0 -> [baseline, 0], train@impactx-0 ->
    [impactx, 0], evaluate@abn -> [abn] (method only), attribution@0 -> [0] (seed only). A seed that is
    not a whole number is refused here, before anything runs."""
    family, _, key = stage.partition("@")
    if not key:
        raise ImpactXError(f"DVC stage {stage!r} has no foreach key: run it as `python -m stages.<name> ARGS`")
    if method and seed and not key.isdigit():
        name, dash, number = key.rpartition("-")
        argv = [name, number] if dash and name else [family, key]
    else:
        argv = [family, key] if method and seed else [key]
    if seed and not argv[-1].isdigit():
        raise ImpactXError(
            f"DVC stage {stage!r} does not end in a whole-number seed: `seeds` in params.yaml takes integers"
        )
    return argv


def dvc_stage(default: str) -> str:
    """The DVC stage running this process (DVC sets DVC_STAGE), or `default` when run by hand."""
    return os.environ.get("DVC_STAGE", default)
