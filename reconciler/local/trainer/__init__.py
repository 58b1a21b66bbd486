"""The embedded backend's trainer: image features + softmax regression in numpy, and a
sliding-window object detector built on the same classifier. Pure computation: bytes in,
weights bytes and metrics out; the service owns every file and thread.

    from reconciler.local.trainer import TrainSample, train, load_predictor
    result = train([TrainSample("cat", png), ...], model_type="small", config={"steps": 300})
    load_predictor(result.weights).predict([png])  # [{"label", "confidence", "scores", "boxes"}]
"""

from reconciler.local.trainer.config import MODEL_TYPES, TrainConfig, parse_config
from reconciler.local.trainer.dataset import TrainResult, TrainSample
from reconciler.local.trainer.errors import InvalidImage, InvalidWeights, TrainingCanceled, TrainingError
from reconciler.local.trainer.predictor import Predictor, load_predictor
from reconciler.local.trainer.train import train

__all__ = [
    "MODEL_TYPES",
    "InvalidImage",
    "InvalidWeights",
    "Predictor",
    "TrainConfig",
    "TrainResult",
    "TrainSample",
    "TrainingCanceled",
    "TrainingError",
    "load_predictor",
    "parse_config",
    "train",
]
