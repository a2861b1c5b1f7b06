"""Full XNNPACK delegation where it used to break: hard-swish inputs near zero (untrained MobileNetV3s).

The sweep over every builder, fusion, precision and input size is benchmarks/zoo_delegation.py
(docs/benchmarks-tflite.md); these are its failing rows as fast regression tests.
"""

import keras
import numpy as np

from keras_bft import applications
from keras_bft import tflite
from keras_bft.tflite import export_layers
from keras_bft.tflite import graph
from keras_bft.tflite import rewrite


def _tiny_and_normal_hard_swish_model():
    """A hard-swish on inputs within 1e-5 of zero, then one on inputs of order 1."""
    inputs = keras.Input((8, 8, 16))
    x = keras.layers.Conv2D(32, 1, name="conv_a")(inputs)
    x = keras.layers.Rescaling(1e-5, name="shrink")(x)
    x = keras.layers.Activation("hard_swish", name="tiny_hard_swish")(x)
    x = keras.layers.Rescaling(1e5, name="grow")(x)
    x = keras.layers.Conv2D(32, 1, name="conv_b")(x)
    x = keras.layers.Activation("hard_swish", name="normal_hard_swish")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def test_hard_swish_near_zero_is_linear_in_int8_delegated_and_matches_keras():
    keras.utils.set_random_seed(0)
    model = _tiny_and_normal_hard_swish_model()
    data = np.random.default_rng(0).uniform(-1, 1, (16, 8, 8, 16)).astype("float32")
    samples = [[sample[None]] for sample in data]

    export, _ = rewrite.prepare_for_export(model, "int8", [(1, 8, 8, 16)], calibration=samples)
    forms = {
        layer.name: layer.linear for layer in export.layers if isinstance(layer, export_layers.HardSwishAsProduct)
    }
    assert forms == {"tiny_hard_swish": True, "normal_hard_swish": False}
    # Without calibration data (float export, QAT) both keep the exact form.
    export, _ = rewrite.prepare_for_export(model, "int8", [(1, 8, 8, 16)])
    assert not any(getattr(layer, "linear", False) for layer in export.layers)

    blob = tflite.convert(model, "int8", representative_data=data)
    assert "HARD_SWISH" not in graph.op_histogram(blob)
    report = tflite.verify(blob, model, data[:8], quantization="int8")
    assert report.fully_delegated is True  # the exact form's ADD(x, 3) is rejected by XNNPACK here
    assert report.passed and report.snr_db >= 25, report


def test_untrained_mobilenet_v3_small_at_96_is_fully_delegated_in_int8():
    # The configuration of issue 10 item 13: default BatchNorm statistics, default export settings.
    keras.utils.set_random_seed(0)
    model = applications.MobileNetV3SmallBFT(input_shape=(96, 96, 3), classes=10)
    data = np.random.default_rng(0).uniform(0, 255, (8, 96, 96, 3)).astype("float32")
    blob = tflite.convert(model, "int8", representative_data=data)
    assert tflite.fully_delegated(blob) is True
