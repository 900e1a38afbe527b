"""Where the stages read and write: every path of the pipeline, relative to the project root.

dvc.yaml declares the same paths (DVC needs them literally); tests/test_layout.py checks that every
stage's declared outputs are the ones below, so the two cannot drift apart."""

from __future__ import annotations

from pathlib import Path

PREPARED = Path("data/prepared")  # fetch_data: the split dataset
DATASET, INFO = "dataset.npz", "info.json"  # file names inside PREPARED
# resumable shards of the attribution stage, removed once maps.npy is written
ATTRIBUTION_WORK = Path(".attribution_work")
COMPILE_CACHE = Path(".cache/torchinductor")  # torch.compile's kernels, shared by every stage and process
STAGE_TIMES = Path(".dvc/tmp/impactx-stage-times.json")  # the flow's measured stage times (impactx.schedule)
TABLE_JSON = Path("metrics/comparison.json")  # every number of the table (git keeps it)
HEADLINE_JSON = Path("metrics/headline.json")  # the DVC metric: the few numbers `dvc exp show` prints
TABLE_MD = Path("metrics/comparison.md")  # the same table with labels and map kinds
MORF_PLOT = Path("plots/morf.json")  # DVC plot data: one row per (method, fraction)
FIGURES = {"explanations": Path("figures/explanations.png"), "morf": Path("figures/morf.png")}


def models(method: str) -> Path:
    """Every seed's checkpoint of one method: what its evaluate stage reads."""
    return Path("models") / method


def model(method: str, seed: int) -> Path:
    """Stage 1 writes method "baseline"; stage 2 every other method."""
    return models(method) / f"seed{seed}.pt"


def attribution_dir(seed: int) -> Path:
    return Path("attribution") / f"seed{seed}"


def attribution_maps(seed: int) -> Path:
    """Raw attribution maps (R) of the training images, N×C×H×W float32."""
    return attribution_dir(seed) / "maps.npy"


def attribution_meta(seed: int) -> Path:
    """What produced attribution_maps(seed): method, explained model, settings, fingerprint, timing."""
    return attribution_dir(seed) / "maps.json"


def results(method: str) -> Path:
    """What the evaluate stage of one method writes, for every seed."""
    return Path("results") / method


def teacher_maps(seed: int) -> Path:
    """R (of A or of the teacher) for the true class of the held-out MoRF images: what every method's map is
    compared with."""
    return attribution_dir(seed) / "teacher_test.npy"


def result(method: str, seed: int) -> Path:
    """Test/validation accuracy, AOPC and the mean MoRF curves of one (method, seed)."""
    return results(method) / f"seed{seed}.json"


def result_maps(method: str, seed: int) -> Path:
    """The explanation maps of the first evaluate.figure_images MoRF images, for the figures."""
    return results(method) / f"seed{seed}.npz"
