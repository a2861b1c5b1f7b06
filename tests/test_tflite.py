"""convert / verify on small BFT and pointwise models: builtins only, parity, full XNNPACK delegation."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_bft import ButterflyFusion
from keras_bft import tflite
from keras_bft.tflite import graph
from keras_bft.tflite import cost_model as cost_model_lib
from keras_bft.tflite import synthetic

BUILTIN_OK = lambda name: not name.startswith(("CUSTOM", "FLEX", "BUILTIN_"))  # noqa: E731


def small_model(fusion="butterfly", channels=32, filters=64, size=8, head="logits", act="relu6", k=4):
    """Depthwise + BN + act, a 1x1 fusion + BN + act, pooled classifier."""
    inputs = keras.Input((size, size, channels))
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation(act)(x)
    if fusion == "butterfly":
        x = ButterflyFusion(filters, butterfly_k=k)(x)
    else:
        x = keras.layers.Conv2D(filters, 1, use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation(act)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(10, activation="softmax" if head == "softmax" else None)(x)
    return synthetic.randomize_batchnorm(keras.Model(inputs, x, name=f"small_{fusion}"))


def _data(model, count=16, seed=0):
    shape = model.input_shape[1:]
    return np.random.default_rng(seed).uniform(-1, 1, (count, *shape)).astype("float32")


@pytest.mark.parametrize("quantization", ["float32", "float16", "dynamic", "int8"])
def test_each_quantization_converts_with_builtins_and_matches_keras(quantization):
    model = small_model()
    data = _data(model)
    blob = tflite.convert(model, quantization, representative_data=data)
    histogram = graph.op_histogram(blob)
    assert all(BUILTIN_OK(name) for name in histogram), histogram
    report = tflite.verify(blob, model, data[:6], quantization=quantization)
    assert report.passed and report.fully_delegated, report
    if quantization == "float32":
        assert report.max_rel_error <= 1e-4
    if quantization == "int8":
        assert report.top1_agreement >= 0.9 and report.snr_db >= 15
        assert {dtype for op, dtype in graph.operators(blob) if op == "CONV_2D"} == {"int8"}


@pytest.mark.parametrize("fusion", ["butterfly", "pointwise"])
def test_int8_softmax_and_hard_swish_models_are_fully_delegated(fusion):
    # A k=4 BFT of 256 channels at 8x8: the exporter keeps stages (merged), not a dense fold.
    model = small_model(fusion, channels=256, filters=256, head="softmax", act="hard_swish")
    data = _data(model)
    blob, decisions = tflite.convert(model, "int8", representative_data=data, return_report=True)
    ops = graph.operators(blob)
    assert ("SOFTMAX", "float32") in ops  # kept in float: XNNPACK has no int8 SOFTMAX
    assert "HARD_SWISH" not in dict(ops)
    report = tflite.verify(blob, model, data[:6], quantization="int8")
    assert report.fully_delegated is True
    if fusion == "butterfly":
        assert len(decisions) == 1


def test_int8_staged_lowering_int8_io_and_rewrite_is_exact_in_float():
    model = small_model(channels=256, filters=256, k=4)
    data = _data(model)
    # A flat per-MAC cost with free passes picks the fewest MACs: every stage kept.
    fewest_macs = cost_model_lib.CostModel(((1, 1.0),), 0.0, 0.0, 0.0)
    blob, decisions = tflite.convert(
        model, "int8", representative_data=data, io_type="int8", cost_model=fewest_macs,
        return_report=True,
    )
    assert decisions[0].kind == "stages" and decisions[0].radices == (4, 4, 4, 4)
    assert graph.io_types(blob) == (["int8"], ["int8"])
    assert {dtype for op, dtype in graph.operators(blob) if op in ("CONV_2D", "TRANSPOSE")} == {"int8"}
    assert graph.op_histogram(blob)["CONV_2D"] == 4
    report = tflite.verify(blob, model, data[:4], quantization="int8")
    assert report.passed and report.fully_delegated
    # The rewritten (merged / folded) model is the same function in float.
    export, decisions = tflite.prepare_for_export(model, "int8", [(1, 8, 8, 256)])
    assert export is not model and decisions
    np.testing.assert_allclose(export(data[:2]), model(data[:2]), rtol=1e-4, atol=1e-4)


def test_calibration_from_dataset_and_image_folder(tmp_path):
    model = small_model(channels=3, filters=16)
    data = _data(model, 8)
    dataset = tf.data.Dataset.from_tensor_slices((data, np.zeros(8))).batch(4)
    blob = tflite.convert(model, "int8", representative_data=dataset)
    assert tflite.verify(blob, model, data[:4], "int8", check_delegation=False).passed
    for i in range(4):
        keras.utils.save_img(tmp_path / f"img{i}.png", (data[i] + 1) * 127.5, scale=False)
    blob = tflite.convert(model, "int8", representative_data=str(tmp_path), preprocess=lambda a: a / 127.5 - 1)
    assert tflite.verify(blob, model, data[:4], "int8", check_delegation=False).passed
    with pytest.raises(ValueError, match="representative_data"):
        tflite.convert(model, "int8", representative_data=str(tmp_path / "missing"))


def test_errors_are_clear_and_nothing_is_half_written(tmp_path):
    model = small_model(channels=8, filters=8)
    with pytest.raises(ValueError, match="representative_data"):
        tflite.convert(model, "int8")
    with pytest.raises(ValueError, match="quantization"):
        tflite.convert(model, "int4")
    out = tmp_path / "m.tflite"
    out.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        tflite.convert(model, output_path=out)
    assert out.read_bytes() == b"keep"
    blob = tflite.convert(model, output_path=out, overwrite=True)
    assert out.read_bytes() == blob
    assert sorted(os.listdir(tmp_path)) == ["m.tflite"]  # no temporary left behind


@keras.saving.register_keras_serializable(package="keras_bft_tests")
class InverseErf(keras.layers.Layer):
    """Uses an op with no TFLite builtin (tf.Erfinv)."""

    def call(self, inputs):
        return keras.ops.erfinv(keras.ops.tanh(inputs))


def test_unconvertible_layer_is_named():
    inputs = keras.Input((4, 4, 8))
    outputs = InverseErf(name="needs_erfinv")(ButterflyFusion(8)(inputs))
    model = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match="needs_erfinv"):
        tflite.convert(model)


def test_verify_fails_loudly_or_warns():
    model = small_model(channels=8, filters=8)
    other = small_model(channels=8, filters=8)  # different random weights
    blob = tflite.convert(model)
    data = _data(model, 3)
    with pytest.raises(ValueError, match="parity"):
        tflite.verify(blob, other, data, check_delegation=False)
    with pytest.warns(UserWarning, match="parity"):
        report = tflite.verify(blob, other, data, check_delegation=False, on_failure="warn")
    assert not report.passed and report.max_rel_error > 1e-4


@pytest.mark.parametrize("fusion", ["butterfly", "pointwise"])
def test_mobilenet_v3_small_int8_fully_delegated(fusion):
    # Hard-swish, squeeze-excite and softmax in one real builder.
    from keras_bft import applications

    model = applications.MobileNetV3SmallBFT((64, 64, 3), fusion=fusion, classes=10, butterfly_k=4)
    synthetic.randomize_batchnorm(model)
    data = _data(model, 8)
    blob = tflite.convert(model, "int8", representative_data=data)
    assert "HARD_SWISH" not in graph.op_histogram(blob)
    report = tflite.verify(blob, model, data[:4], quantization="int8")
    assert report.passed and report.fully_delegated


@pytest.mark.parametrize("split", [None, 3])
def test_channel_split_is_rewritten_without_split_v(split):
    from keras_bft.layers import ChannelSplit

    inputs = keras.Input((6, 6, 8))
    left, right = ChannelSplit(split=split)(keras.layers.Conv2D(8, 1)(inputs))
    outputs = keras.layers.Concatenate()([ButterflyFusion(left.shape[-1])(left), right * 2.0])
    model = keras.Model(inputs, outputs)
    data = _data(model, 8)
    for quantization in ("float32", "int8"):
        blob = tflite.convert(model, quantization, representative_data=data)
        assert "SPLIT_V" not in graph.op_histogram(blob)  # XNNPACK has no SPLIT_V
        report = tflite.verify(blob, model, data[:4], quantization=quantization)
        assert report.passed and report.fully_delegated
