"""resnets: train, evaluate and benchmark ResNet-family classifiers with calibrated uncertainty."""
from .models import create_model, import_weights, list_models

__all__ = ["create_model", "import_weights", "list_models"]
__version__ = "0.1.0"
