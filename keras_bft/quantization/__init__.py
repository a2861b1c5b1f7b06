"""Quantization-aware training for Keras 3 models, ending in int8 TFLite models.

`quantize_model(model)` returns a fake-quantized, trainable twin of a float
model (TFLite's int8 scheme: per-channel symmetric weights, per-tensor
asymmetric activations with learned moving-average ranges, batch norm folded).
After fine-tuning, the TFLite converter turns it into a fully int8 model with
no representative dataset. See docs/quantization.md.
"""

from keras_bft.quantization.layers import ActivationQuantizer
from keras_bft.quantization.layers import QuantizedLinear
from keras_bft.quantization.layers import QuantizedOp
from keras_bft.quantization.quantize import calibrate
from keras_bft.quantization.quantize import quantize_model
from keras_bft.quantization.quantizers import quantize_weights

__all__ = [
    "ActivationQuantizer",
    "QuantizedLinear",
    "QuantizedOp",
    "calibrate",
    "quantize_model",
    "quantize_weights",
]
