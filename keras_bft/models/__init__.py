"""Bring your own model: turn a trained Keras model's 1x1 convs and Dense layers into
butterflies (`replace_pointwise`), then recover accuracy by distillation (`Distiller`).
See docs/accuracy.md."""

from keras_bft.models.distill import Distiller
from keras_bft.models.distill import SoftTargetDistillation
from keras_bft.models.replace import ReplacedLayer
from keras_bft.models.replace import ReplaceReport
from keras_bft.models.replace import pointwise_site
from keras_bft.models.replace import replace_pointwise

__all__ = ["Distiller", "ReplaceReport", "ReplacedLayer", "SoftTargetDistillation", "pointwise_site", "replace_pointwise"]
