"""IMPACTX: a classifier that also predicts the SHAP explanation of its own decision, and the methods
it is compared with.

Modules, one idea each, from the bottom layer up (a module imports only from layers below it;
tests/test_architecture.py fails on a cycle):
    io, layout   atomic writes; where the stages read and write
    config       params.yaml's fixed sections: pydantic schemas, nothing of the package above them
    data         data sources, the fixed, seeded train/val/test split, DatasetInfo
    backbones    registry of feature extractors M (LeNet-5, cnn3, MobileNetV2, EfficientNet-B2) and their weights
    model        the baseline classifier A = M(normalise(x))
    inference    how forward-only passes run: torch.compile, bfloat16 autocast, channels_last, fixed batches
    owen         Partition SHAP for many images at once
    attribution/ the registry of attribution methods R, one module each (shap_partition,
                 integrated_gradients, gradient_shap, deeplift), one call shape: attribute(model, x, y, spec)
    maps         attribution maps as data: saved, scaled into training targets, class means
    shards       the attribution stage's engine: resumable shards of any R, here or on Dask (fanout)
    train        the training loop every method uses, and the training recipe (augmentation, schedule)
    methods/     the method registry, one module per row of the table (baseline, impactx,
                 impactx_lambda0, abn, wae): build from stage 1, loss, map, checkpoints
    params       the full params.yaml schema: config + one section per method and per R; load_params
    morf         MoRF curves and AOPC
    fidelity     agreement of a map with R (of A or of the teacher) for the true class, and its floors
    evaluation   accuracy, MoRF and fidelity of one (method, seed)
    compare      Table 2 over methods and seeds, paired differences and verdicts
    report       the docs' results pages, generated from studies/results/*.json
    figures      paper-style figures
    serving      the registered model as an MLflow pyfunc: class, probabilities and map per image
    tracking     MLflow runs, model logging, registry and champion alias
    teacher      the model R explains: A of a seed, or a teacher from the MLflow registry
    fanout       attribution shards on a Dask cluster through Prefect
    threadprobe  whether this machine's forward passes give the same bytes at any thread count (worker slots)
    experiments  the best DVC experiment by a validation metric
    watchdog     ends a stage's MLflow run as KILLED when its process is SIGKILLed
    stage        the DVC stages' plumbing: arguments, one-line errors and exit codes
    cli          the `impactx` command: `impactx explain IMAGES... --model models:/...`
"""

import logging

__version__ = "0.1.0"

# The package reports progress on the "impactx" logger; the stages and the `impactx` command show it
# (impactx.stage.show_progress). A library user sees nothing unless they configure logging.
logging.getLogger(__name__).addHandler(logging.NullHandler())


class ImpactXError(Exception):
    """An error caused by the user's input; stages print it as one line and exit non-zero."""
