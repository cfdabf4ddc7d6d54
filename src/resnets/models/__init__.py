from .registry import MODELS, OVERRIDABLE, create_model, list_models
from .resnet import ResNet
from .weights import import_weights

__all__ = ["MODELS", "OVERRIDABLE", "ResNet", "create_model", "import_weights", "list_models"]
