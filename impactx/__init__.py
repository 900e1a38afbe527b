"""IMPACTX: a classifier that also predicts the SHAP explanation of its own decision.

Modules, one idea each:
    config      params.yaml schema and validation
    data        data sources and the fixed, seeded train/val/test split
    backbones   registry of feature extractors M (LeNet-5, ...)
    model       classifier A, LEP, decoder D, combined IMPACTX model and its loss
    train       training loops for stage 1 (A) and stage 2 (IMPACTX)
    shap_maps   SHAP attribution maps for the true class, sharded and resumable
    morf        MoRF curves and AOPC
    figures     paper-style figures
    tracking    MLflow runs, model logging, registry and champion alias
"""

__version__ = "0.1.0"


class ImpactXError(Exception):
    """An error caused by the user's input; stages print it as one line and exit non-zero."""
