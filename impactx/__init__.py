"""IMPACTX: a classifier that also predicts the SHAP explanation of its own decision, and the methods
it is compared with.

Modules, one idea each:
    config       params.yaml schema and validation (method sections come from the registry)
    data         data sources, the fixed, seeded train/val/test split, DatasetInfo
    backbones    registry of feature extractors M (LeNet-5, cnn3, MobileNetV2, EfficientNet-B2) and their weights
    model        the baseline classifier A = M(normalise(x))
    methods/     the method registry, one module per row of the table (baseline, impactx,
                 impactx_lambda0, abn, wae): build from stage 1, loss, map, checkpoints
    train        the training loop every method uses, and the training recipe (augmentation, schedule)
    attribution  R as a param: SHAP Partition or captum's gradient methods, of A or of a teacher model
    shap_maps    SHAP attribution maps for the true class; the attribution stage's resumable shards
    owen         Partition SHAP for many images at once
    fanout       SHAP shards on a Dask cluster through Prefect
    morf         MoRF curves and AOPC
    fidelity     agreement of a map with R (of A or of the teacher) for the true class, and its floors
    evaluation   accuracy, MoRF and fidelity of one (method, seed)
    compare      Table 2 over methods and seeds, paired differences and verdicts
    experiments  the best DVC experiment by a validation metric
    figures      paper-style figures
    tracking     MLflow runs, model logging, registry and champion alias
    watchdog     ends a stage's MLflow run as KILLED when its process is SIGKILLed
    serving      the registered model as an MLflow pyfunc: class, probabilities and map per image
    console      the `impactx` command: `impactx explain IMAGES... --model models:/...`
    layout       where the stages read and write
"""

__version__ = "0.1.0"


class ImpactXError(Exception):
    """An error caused by the user's input; stages print it as one line and exit non-zero."""
