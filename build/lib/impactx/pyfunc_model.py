"""The file MLflow runs to load a registered impactx model ("models from code", impactx.serving): it
builds the model from the package's own code and a weights-only checkpoint; nothing is unpickled."""

import mlflow

from impactx.serving import ExplainingModel

mlflow.models.set_model(ExplainingModel())
