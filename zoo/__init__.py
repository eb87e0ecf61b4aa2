"""resnet-zoo: the ResNet family, exact and fast, with pretrained weights."""

from . import variants as _variants  # noqa: F401  (registers the model table)
from .config import ResNetConfig
from .errors import (
    ConfigError,
    RegistryError,
    StateDictError,
    UnknownModelError,
    UnsafeCheckpointError,
    WeightsIntegrityError,
    WeightsNotFoundError,
    ZooError,
)
from .factory import create_model
from .features import FeatureExtractor, FeatureInfo
from .registry import is_model, list_models, list_pretrained, register_model
from .resnet import ResNet
from .variants import register_resnet

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "FeatureExtractor",
    "FeatureInfo",
    "RegistryError",
    "ResNet",
    "ResNetConfig",
    "StateDictError",
    "UnknownModelError",
    "UnsafeCheckpointError",
    "WeightsIntegrityError",
    "WeightsNotFoundError",
    "ZooError",
    "create_model",
    "is_model",
    "list_models",
    "list_pretrained",
    "register_model",
    "register_resnet",
]
