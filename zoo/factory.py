"""create_model: the one place that puts registry, config, weights and features together."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .errors import ConfigError
from .features import FeatureExtractor
from .registry import get_entry


def create_model(
    model_name: str,
    pretrained: bool = False,
    *,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    frozen_stages: int = -1,
    norm_eval: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model by name.

    Args:
        model_name: ``arch`` or ``arch.tag`` (``"resnet50.tv2_in1k"``).
        pretrained: load the weights the name points to.
        features_only: return a backbone whose forward gives a list of feature maps.
        out_indices: which feature maps (0 = stem, 1.. = stages); default all.
        frozen_stages: with ``features_only``: freeze the stem and the first k stages (-1: none).
        norm_eval: with ``features_only``: keep batch norms in eval mode while training.
        **kwargs: architecture options (``num_classes``, ``in_chans``, ``norm_layer``, ...).
    """
    entry = get_entry(model_name)
    if not isinstance(features_only, bool):
        raise ConfigError("features_only", f"expected true or false, got {features_only!r}")
    if not features_only and (out_indices is not None or frozen_stages != -1 or norm_eval):
        raise ConfigError(
            "features_only", "out_indices, frozen_stages and norm_eval only apply with features_only=True"
        )
    model = entry.builder(**kwargs)
    if pretrained:
        raise NotImplementedError("pretrained weights: see issue 3")
    if features_only:
        model = FeatureExtractor(model, out_indices, frozen_stages=frozen_stages, norm_eval=norm_eval)
    return model
