"""Stable import path of the backbone factory (public API); the code is `stego_tasks.method.backbone`."""

from stego_tasks.method.backbone import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneSpec,
    create_backbone,
    create_seeded_backbone,
    list_backbones,
    normalize,
)
from stego_tasks.method.weights import WeightsNotFoundError, read_checkpoint, weights_argument

__all__ = [
    "BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "BackboneSpec",
    "WeightsNotFoundError",
    "create_backbone",
    "create_seeded_backbone",
    "list_backbones",
    "normalize",
    "read_checkpoint",
    "weights_argument",
]
