"""IMPACTX: a classifier that also predicts the SHAP explanation of its own decision, and the methods
it is compared with.

Modules, one idea each:
    config      params.yaml schema and validation
    data        data sources and the fixed, seeded train/val/test split
    backbones   registry of feature extractors M (LeNet-5, MobileNetV2, EfficientNet-B2) and their weights
    model       classifier A, LEP, decoder D, combined IMPACTX model and its loss
    abn         Attention Branch Network
    wae         this project's reading of WAE (explanation-encoder attention)
    methods     the stage-2 methods: build, load, loss
    train       the training loop every method uses
    shap_maps   SHAP attribution maps for the true class, sharded and resumable
    owen        Partition SHAP for many images at once
    fanout      SHAP shards on a Dask cluster through Prefect
    morf        MoRF curves and AOPC
    evaluation  accuracy and MoRF of one (method, seed)
    compare     Table 2 over methods and seeds
    figures     paper-style figures
    tracking    MLflow runs, model logging, registry and champion alias
    layout      where the stages read and write
"""

__version__ = "0.1.0"


class ImpactXError(Exception):
    """An error caused by the user's input; stages print it as one line and exit non-zero."""
