"""resnet-zoo: the ResNet family, exact and fast, with pretrained weights."""

__version__ = "0.1.0"  # the one place; pyproject.toml reads it

from . import pretrained as _pretrained  # noqa: F401  (registers the weight tags)
from . import variants as _variants  # noqa: F401  (registers the model table)
from .config import ResNetConfig
from .counting import count
from .data import create_transform, resolve_data_config
from .deploy import export, load_package
from .errors import (
    ConfigError,
    DiskFullError,
    ExportError,
    MissingExtraError,
    RegistryError,
    StateDictError,
    TrainingDiverged,
    UnknownModelError,
    UnsafeCheckpointError,
    WeightsIntegrityError,
    WeightsNotFoundError,
    ZooError,
)
from .factory import create_model, create_model_from_config
from .features import FeatureExtractor, FeatureInfo
from .hardware import cpu_info, resolve_precision
from .optimize import fold_batch_norms, optimize_for_inference, quantize_int8
from .registry import (
    get_pretrained_cfg_value,
    is_model,
    list_models,
    list_pretrained,
    register_model,
    register_weights,
)
from .resnet import ResNet
from .variants import register_resnet
from .weights import Weights
from .yaml_config import model_config, save_config

__all__ = [
    "ConfigError",
    "DiskFullError",
    "ExportError",
    "FeatureExtractor",
    "FeatureInfo",
    "MissingExtraError",
    "RegistryError",
    "ResNet",
    "ResNetConfig",
    "StateDictError",
    "TrainingDiverged",
    "UnknownModelError",
    "UnsafeCheckpointError",
    "Weights",
    "WeightsIntegrityError",
    "WeightsNotFoundError",
    "ZooError",
    "count",
    "cpu_info",
    "create_model",
    "create_model_from_config",
    "create_transform",
    "export",
    "fold_batch_norms",
    "get_pretrained_cfg_value",
    "is_model",
    "list_models",
    "list_pretrained",
    "load_package",
    "model_config",
    "optimize_for_inference",
    "quantize_int8",
    "register_model",
    "register_resnet",
    "register_weights",
    "resolve_data_config",
    "resolve_precision",
    "save_config",
]
