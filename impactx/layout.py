"""Where the stages read and write, one function per artefact; dvc.yaml declares the same paths."""

from __future__ import annotations

from pathlib import Path

PREPARED = Path("data/prepared")


def model(method: str, seed: int) -> Path:
    """Stage 1 writes method "baseline"; stage 2 every other method."""
    return Path("models") / method / f"seed{seed}.pt"


def shap_dir(seed: int) -> Path:
    return Path("shap") / f"seed{seed}"


def result(method: str, seed: int) -> Path:
    """Test/validation accuracy, AOPC and the mean MoRF curves of one (method, seed)."""
    return Path("results") / method / f"seed{seed}.json"


def result_maps(method: str, seed: int) -> Path:
    """The explanation maps of the first evaluate.figure_images MoRF images, for the figures."""
    return Path("results") / method / f"seed{seed}.npz"
