"""Quantization-aware training: fake quant vs NumPy oracles, vs the float model, and vs the int8 TFLite model.

Oracles: the float Keras model; NumPy re-implementations of TF's fake-quant
arithmetic, of batch-norm folding and of the butterfly stages (group matmul +
perfect shuffle, the definition in keras_bft.ops.plans, not the grouped-conv
code under test); and the converted model run by LiteRT's interpreter.
"""

import collections
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

import keras_bft
from keras_bft.quantization import QuantizedLinear
from keras_bft.quantization import calibrate
from keras_bft.quantization import quantize_model
from keras_bft.quantization import quantize_weights
from keras_bft.ops import oracle

SHAPE = (8, 8, 3)


# ---------------------------------------------------------------- oracles


def np_fake_quant(x, low, high, narrow_range=False):
    """TF's FakeQuantWithMinMaxVars in float64 (range nudged so that 0 is on the grid)."""
    qmin, qmax = (1.0 if narrow_range else 0.0), 255.0
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    scale = (high - low) / (qmax - qmin)
    zero_point = np.clip(np.floor(qmin - low / scale + 0.5), qmin, qmax)
    nudged_min, nudged_max = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    clipped = np.clip(x, nudged_min, nudged_max)
    return np.floor((clipped - nudged_min) / scale + 0.5) * scale + nudged_min


def np_int8_params(low, high):
    """(scale, int8 zero point) that TFLite must store for the fake-quant range [low, high]."""
    scale = (high - low) / 255.0
    zero_point = np.clip(np.floor(-low / scale + 0.5), 0, 255)
    return scale, int(zero_point) - 128


def np_weight_quant(kernel):
    """Per-channel (last axis) symmetric narrow-range quantization, and the scales."""
    bound = np.maximum(np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0), 1e-4)
    scale = bound / 127.0
    return np.clip(np.round(kernel / scale), -127, 127) * scale, scale


def np_range(layer, name):
    values = {v.path.split("/")[-1]: np.asarray(v) for v in layer.weights if len(v.shape) == 0}
    return float(values[f"{name}_min"]), float(values[f"{name}_max"])


def np_bn_fold(bn_layer):
    gamma, beta, mean, var = (np.asarray(w, np.float64) for w in bn_layer.get_weights())
    scale = gamma / np.sqrt(var + bn_layer.epsilon)
    return scale, beta - scale * mean


def np_stage_kernels(layer):
    """The layer's stage kernels and plan, with `merge_stages` applied via dense stage products."""
    kernels = [np.asarray(k, np.float64) for k in layer.kernels]
    plan = layer.plan
    if layer.merge_stages is None:
        return kernels, plan
    merged_plan, merged, start = plan.merge(layer.merge_stages), [], 0
    for count, stage in zip(layer.merge_stages, merged_plan.stages):
        product = np.eye(plan.stages[start].in_channels)
        for j in range(start, start + count):
            product = product @ oracle.stage_matrix(kernels[j], plan.stages[j])
        start += count
        groups, a, b = stage.kernel_shape
        block = np.empty(stage.kernel_shape)
        for g in range(groups):
            block[g] = product[g * a : (g + 1) * a][:, np.arange(b) * groups + g]
        # A merged stage must still be block diagonal: nothing outside the blocks.
        assert np.allclose(oracle.stage_matrix(block, stage), product)
        merged.append(block)
    return merged, merged_plan


def np_activation(y, activation):
    if activation == "relu":
        return np.maximum(y, 0)
    if activation == "relu6":
        return np.clip(y, 0, 6)
    return y


def np_butterfly(qlayer, x):
    """The quantized butterfly of a QuantizedLinear in NumPy: stage by stage, from the plan's definition.

    A butterfly in its dense-fold export form is the oracle's dense matrix (residual included), batch
    norm folded, quantized per output channel: one 1x1 conv.
    """
    layer = qlayer.layer
    kernels, plan = np_stage_kernels(layer)
    scale = shift = None
    if qlayer.batch_norm is not None:
        scale, shift = np_bn_fold(qlayer.batch_norm)
    elif layer.use_bias:
        shift = np.asarray(layer.bias, np.float64)
    m = x.reshape(-1, plan.in_channels).astype(np.float64)
    if layer.lowering == "dense":
        dense = oracle.dense_matrix([np.asarray(k, np.float64) for k in layer.kernels], layer.plan, layer.residual)
        if scale is not None:
            dense = dense * scale
        y = m @ np_weight_quant(dense)[0] + (0.0 if shift is None else shift)
        y = np_fake_quant(np_activation(y, qlayer.activation), *np_range(qlayer, "output"))
        return y.reshape(x.shape[:-1] + (plan.out_channels,))
    y = np.pad(m, ((0, 0), (0, plan.padded_in - plan.in_channels)))
    for i, (w, stage) in enumerate(zip(kernels, plan.stages)):
        groups, a, b = stage.kernel_shape
        last = i == plan.num_stages - 1
        w = w.copy()
        s_full = np.ones(groups * b)
        t_full = np.zeros(groups * b)
        if last:
            if scale is not None:
                s_full[: plan.out_channels] = scale
            if shift is not None:
                t_full[: plan.out_channels] = shift
            for g in range(groups):
                for e in range(b):
                    w[g, :, e] *= s_full[e * groups + g]
        # Per output channel (g, e): the max over the group's inputs.
        wq = np.empty_like(w)
        for g in range(groups):
            wq[g], _ = np_weight_quant(w[g])
        y = np.einsum("mga,gab->mgb", y.reshape(-1, groups, a), wq)
        y = y.transpose(0, 2, 1).reshape(-1, b * groups)  # channel e * G + g
        if last:
            y = y + t_full
            if not layer.residual:
                y = np.maximum(y, 0) if qlayer.activation != "linear" else y
                if qlayer.activation == "relu6":
                    y = np.minimum(y, 6)
        if i < len(qlayer.stage_ranges):
            y = np_fake_quant(y, *np_range(qlayer, f"stage_{i}"))
    y = y[:, : plan.out_channels]
    if layer.residual:
        r = m[:, : plan.out_channels] if plan.in_channels > plan.out_channels else m
        if scale is not None:
            r = np_fake_quant(r * scale[: r.shape[1]], *np_range(qlayer, "residual"))
        r = np.pad(r, ((0, 0), (0, plan.out_channels - r.shape[1])))
        y = np_activation(y + r, qlayer.activation)
    y = np_fake_quant(y, *np_range(qlayer, "output"))
    return y.reshape(x.shape[:-1] + (plan.out_channels,))


# ----------------------------------------------------------------- models


def _randomize_batch_norms(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, n),
                    rng.uniform(-0.2, 0.2, n),
                    rng.uniform(-0.3, 0.3, n),
                    rng.uniform(0.5, 2.0, n),
                ]
            )


def small_model():
    """Conv/depthwise/butterfly (square, widening with bias, narrowing merged, no residual) + BN + ReLU, add, concat."""
    keras.utils.set_random_seed(1)
    layers = keras.layers
    inputs = keras.Input(SHAPE)
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = layers.BatchNormalization(name="conv_bn")(x)
    x = layers.ReLU(name="conv_relu")(x)
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    y = layers.BatchNormalization(name="dw_bn")(y)
    y = layers.ReLU(6.0, name="dw_relu")(y)
    y = keras_bft.ButterflyFusion(16, butterfly_k=4, name="bfsq")(y)
    y = layers.BatchNormalization(name="bfsq_bn")(y)
    y = layers.ReLU(name="bfsq_relu")(y)
    z = layers.Add(name="add")([x, y])
    z = layers.MaxPooling2D(name="pool")(z)
    z = keras_bft.ButterflyFusion(32, butterfly_k=4, use_bias=True, activation="relu", name="bfwide")(z)
    a = keras_bft.ButterflyFusion(
        24, butterfly_k=2, num_stages=3, merge_stages=(2, 1), name="bfnarrow"
    )(z)
    a = layers.BatchNormalization(name="bfnarrow_bn")(a)
    b = keras_bft.ButterflyFusion(8, butterfly_k=4, residual=False, name="bfnores")(z)
    b = layers.BatchNormalization(name="bfnores_bn")(b)
    b = layers.ReLU(6.0, name="bfnores_relu")(b)
    c = layers.Concatenate(name="concat")([a, b])
    c = layers.GlobalAveragePooling2D(name="gap")(c)
    outputs = layers.Dense(10, name="head")(c)
    model = keras.Model(inputs, outputs)
    _randomize_batch_norms(model)
    return model


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n,) + SHAPE).astype("float32"), rng.integers(0, 10, n)


def _convert(model):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def _run_tflite(content, x):
    interpreter = Interpreter(model_content=content)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _fine_tuned(objective):
    model = small_model()
    x, y = _data(96)
    qat = quantize_model(model, calibration_data=x[:64], objective=objective)
    qat.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    qat.fit(x, y, batch_size=16, epochs=1, verbose=0)
    return model, qat, _convert(qat)


@pytest.fixture(scope="module")
def trained():
    """A small float model, its QAT twin (butterflies as trained) after a short jit-compiled fine-tune, int8."""
    return _fine_tuned(objective=None)


@pytest.fixture(scope="module")
def trained_export_forms():
    """The same with each butterfly in the form the exporter gives it at 8x8 (latency objective)."""
    return _fine_tuned(objective="latency")


# ------------------------------------------------------------------ tests


def test_quantize_weights_per_channel_symmetric():
    rng = np.random.default_rng(3)
    kernel = rng.standard_normal((3, 3, 4, 6)).astype("float32") * np.array([1, 10, 0.1, 3, 0.5, 2])
    got = np.asarray(quantize_weights(kernel))
    want, scale = np_weight_quant(kernel.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(kernel).max())
    # 255 levels at most, symmetric around 0, per channel.
    for c in range(6):
        levels = np.unique(np.round(got[..., c] / scale[c]))
        assert levels.min() >= -127 and levels.max() <= 127
        assert np.abs(got[..., c]).max() == pytest.approx(np.abs(kernel[..., c]).max(), rel=3e-6)


def test_structure_folds_and_fuses():
    qat = quantize_model(small_model(), objective=None)
    by_name = {layer.name: layer for layer in qat.layers}
    assert [type(layer).__name__ for layer in qat.layers].count("QuantizedLinear") == 7
    assert by_name["quant_conv"].batch_norm is not None and by_name["quant_conv"].activation == "relu"
    assert by_name["quant_dw"].activation == "relu6"
    assert by_name["quant_bfwide"].activation == "relu" and by_name["quant_bfwide"].batch_norm is None
    assert by_name["quant_add"].activation == "linear"
    assert "pool" in by_name and not isinstance(by_name["pool"], QuantizedLinear)
    # Concatenate's inputs take the concatenation's range (as in TFLite).
    assert not by_name["quant_bfnarrow"].quantize_output and not by_name["quant_bfnores"].quantize_output
    assert by_name["quant_concat"].quantize_output
    # One range per stage boundary: bfsq has 2 stages + residual mul, bfnarrow is merged to 2.
    assert len(by_name["quant_bfsq"].stage_ranges) == 2 and by_name["quant_bfsq"].residual_range
    assert len(by_name["quant_bfnarrow"].stage_ranges) == 2
    assert len(by_name["quant_bfnores"].stage_ranges) == by_name["quant_bfnores"].layer.plan.num_stages - 1
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in qat.layers)


def test_fake_quant_model_matches_float_before_training():
    model = small_model()
    x, _ = _data(64)
    qat = quantize_model(model, calibration_data=x)
    want = model.predict(x, verbose=0)
    got = qat.predict(x, verbose=0)
    err = np.abs(got - want)
    # int8 error only: a few percent of the logit range, same decisions.
    assert err.max() < 0.05 * np.abs(want).max(), (err.max(), np.abs(want).max())
    assert np.mean(np.argmax(got, -1) == np.argmax(want, -1)) >= 0.9
    # Without calibration the first training batch sets the ranges; the ranges hold 0.
    for layer in qat.layers:
        for v in layer.weights:
            if v.path.endswith("_min"):
                assert float(np.asarray(v)) <= 0.0


@pytest.mark.parametrize("forms", ["trained", "trained_export_forms"])
@pytest.mark.parametrize("name", ["bfsq", "bfwide", "bfnarrow", "bfnores"])
def test_butterfly_stages_match_numpy_oracle(forms, name, request):
    _, qat, _ = request.getfixturevalue(forms)
    qlayer = qat.get_layer(f"quant_{name}")
    feeds = keras.Model(qat.input, [qlayer.input, qlayer.output])
    x, _ = _data(8, seed=5)
    layer_in, layer_out = (np.asarray(t) for t in feeds(x, training=False))
    if not qlayer.quantize_output:
        # Its output is quantized by the concatenation: compare before that.
        qlayer.quantize_output = True
        layer_out = np.asarray(qlayer(layer_in, training=False))
        qlayer.quantize_output = False
    want = np_butterfly(qlayer, layer_in)
    lsb = (lambda lo, hi: (hi - lo) / 255)(*np_range(qlayer, "output"))
    diff = np.abs(layer_out - want)
    # Float32 vs float64 can flip a rounding at a grid midpoint: rare, <= 2 steps.
    assert diff.max() <= 2.01 * lsb, (diff.max(), lsb)
    assert np.mean(diff > 1e-4 * lsb + 1e-6) < 0.02


def test_batch_norm_folding_exact_in_inference(trained):
    _, qat, _ = trained
    qlayer = qat.get_layer("quant_conv")
    feeds = keras.Model(qat.input, [qlayer.input, qlayer.output])
    x, _ = _data(8, seed=6)
    layer_in, got = (np.asarray(t) for t in feeds(x, training=False))
    scale, shift = np_bn_fold(qlayer.batch_norm)
    kernel_q, _ = np_weight_quant(np.asarray(qlayer.layer.kernel, np.float64) * scale)
    # Float reference conv (Keras' own Conv2D) with the NumPy-folded, NumPy-quantized kernel.
    conv = keras.layers.Conv2D(16, 3, padding="same", use_bias=True)
    conv.build(layer_in.shape)
    conv.set_weights([kernel_q.astype("float32"), shift.astype("float32")])
    want = np_fake_quant(np.maximum(np.asarray(conv(layer_in), np.float64), 0), *np_range(qlayer, "output"))
    lsb = (lambda lo, hi: (hi - lo) / 255)(*np_range(qlayer, "output"))
    diff = np.abs(got - want)
    assert diff.max() <= 1.01 * lsb
    assert np.mean(diff > 1e-6) < 0.01


def test_batch_norm_training_step_matches_batch_normalization():
    """Training mode: batch statistics normalize, moving statistics update like BatchNormalization."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(8, 3, use_bias=True, name="c")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn")(x)
    model = keras.Model(inputs, x)
    _randomize_batch_norms(model)
    qat = quantize_model(model)
    x, _ = _data(32, seed=7)
    want = np.asarray(model(x, training=True))  # float conv + BN in training mode (updates model's BN)
    got = np.asarray(qat(x, training=True))
    bn, qbn = model.get_layer("bn"), qat.get_layer("quant_c").batch_norm
    np.testing.assert_allclose(np.asarray(qbn.moving_mean), np.asarray(bn.moving_mean), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(qbn.moving_variance), np.asarray(bn.moving_variance), rtol=1e-4, atol=1e-5
    )
    # Same batch-normalized values up to weight and output quantization.
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def _int8_tensors(content):
    interpreter = Interpreter(model_content=content)
    return interpreter, {t["index"]: t for t in interpreter.get_tensor_details()}


def _int8_ops(content):
    """The ops of a converted model (delegate nodes aside), asserting that only QUANTIZE/DEQUANTIZE output
    float; and the largest int8 scale (one step of the coarsest tensor)."""
    interpreter, tensors = _int8_tensors(content)
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    for op in ops:
        if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE"):
            assert all(tensors[i]["dtype"] != np.float32 for i in op["outputs"]), op["op_name"]
    lsb = max(float(t["quantization"][0]) for t in tensors.values() if t["dtype"] == np.int8)
    return ops, lsb


def test_conversion_is_int8_without_representative_data(trained):
    _, qat, content = trained
    interpreter, tensors = _int8_tensors(content)
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    histogram = collections.Counter(op["op_name"] for op in ops)
    assert histogram["QUANTIZE"] == 1 and histogram["DEQUANTIZE"] == 1
    assert histogram["CONV_2D"] == 1 + 2 + 2 + 2 + 2 + 1  # conv, bfsq, bfwide, bfnarrow (merged), bfnores, head
    # dw, and the batch-norm scale of the residual of bfsq and bfnarrow.
    assert histogram["DEPTHWISE_CONV_2D"] == 3
    assert set(histogram) <= {
        "QUANTIZE", "DEQUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "RESHAPE",
        "TRANSPOSE", "MAX_POOL_2D", "PAD", "STRIDED_SLICE", "CONCATENATION", "MEAN",
    }, histogram
    float_tensors = []
    for op in ops:
        for index in list(op["inputs"]) + list(op["outputs"]):
            if index < 0:
                continue
            t = tensors[index]
            if t["dtype"] == np.float32:
                float_tensors.append((op["op_name"], t["name"]))
            elif t["dtype"] == np.int32 and op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                assert index == op["inputs"][2], t["name"]  # only the bias is int32
    # Float only at the model's boundary.
    assert sorted(name for name, _ in float_tensors) == ["DEQUANTIZE", "QUANTIZE"], float_tensors


def test_int8_model_matches_qat_model(trained):
    _, qat, content = trained
    x, _ = _data(32, seed=8)
    want = qat.predict(x, verbose=0)
    got = _run_tflite(content, x)
    interpreter, tensors = _int8_tensors(content)
    dequantize = [op for op in interpreter._get_ops_details() if op["op_name"] == "DEQUANTIZE"][0]
    lsb = tensors[dequantize["inputs"][0]]["quantization"][0]
    diff = np.abs(got - want)
    # Integer kernels round like the fake quant up to an occasional step.
    assert diff.max() <= 4 * lsb, (diff.max(), lsb)
    assert diff.mean() <= 0.5 * lsb
    assert np.mean(np.argmax(got, -1) == np.argmax(want, -1)) >= 0.9


def test_tflite_stores_learned_ranges(trained):
    """The converted model's quantization parameters are the QAT model's ranges and per-channel scales."""
    _, qat, content = trained
    interpreter, tensors = _int8_tensors(content)
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    activation_params = {
        (round(float(t["quantization"][0]), 9), int(t["quantization"][1]))
        for t in tensors.values()
        if t["dtype"] == np.int8
    }
    # Every learned activation range appears as a (scale, zero point) in the int8 model.
    checked = 0
    for layer in qat.layers:
        names = [v.path.split("/")[-1][: -len("_min")] for v in layer.weights if v.path.endswith("_min")]
        for name in names:
            if name == "output" and not getattr(layer, "quantize_output", True):
                continue
            scale, zero_point = np_int8_params(*np_range(layer, name))
            assert (round(scale, 9), zero_point) in activation_params or any(
                abs(s - scale) <= 1e-6 * scale and z == zero_point for s, z in activation_params
            ), (layer.name, name, scale, zero_point)
            checked += 1
    assert checked >= 15
    # Conv filters: per output channel (axis 0 in TFLite's OHWI), zero point 0, scale max|w|/127
    # of the folded kernel; the int8 values are the rounded folded kernel.
    qconv = qat.get_layer("quant_conv")
    scale, _ = np_bn_fold(qconv.batch_norm)
    folded = np.asarray(qconv.layer.kernel, np.float64) * scale
    _, want_scales = np_weight_quant(folded)
    conv_ops = [op for op in ops if op["op_name"] == "CONV_2D"]
    filters = [tensors[op["inputs"][1]] for op in conv_ops]
    match = [f for f in filters if tuple(f["shape"]) == (16, 3, 3, 3)]
    assert len(match) == 1
    q = match[0]["quantization_parameters"]
    assert q["quantized_dimension"] == 0 and not np.any(q["zero_points"])
    np.testing.assert_allclose(q["scales"], want_scales, rtol=1e-5)
    values = interpreter.get_tensor(match[0]["index"]).astype(np.float64)
    np.testing.assert_allclose(
        values, np.round(np.transpose(folded, (3, 0, 1, 2)) / want_scales[:, None, None, None]), atol=1
    )
    # Depthwise: channel axis 3 of (1, kh, kw, C * M).
    depthwise = [tensors[op["inputs"][1]] for op in ops if op["op_name"] == "DEPTHWISE_CONV_2D"]
    assert sorted(tuple(t["shape"]) for t in depthwise) == [(1, 1, 1, 16), (1, 1, 1, 24), (1, 3, 3, 16)]
    for t in depthwise:
        q = t["quantization_parameters"]
        assert q["quantized_dimension"] == 3 and len(q["scales"]) == t["shape"][3]
    # The residual's batch-norm scale is exact: each channel is its own maximum (+-127).
    residual_scale = [t for t in depthwise if tuple(t["shape"]) == (1, 1, 1, 16)][0]
    np.testing.assert_array_equal(np.abs(interpreter.get_tensor(residual_scale["index"])), 127)
    # Butterfly stage filters are grouped convs (G * b, 1, 1, a), one scale per (group, output).
    qbf = qat.get_layer("quant_bfwide")
    stage_shapes = {(s.groups * s.group_out, 1, 1, s.group_in) for s in qbf.layer.plan.stages}
    stage_filters = [f for f in filters if tuple(f["shape"]) in stage_shapes]
    assert len(stage_filters) >= 2
    for f in stage_filters:
        scales = f["quantization_parameters"]["scales"]
        assert len(scales) == f["shape"][0] and np.all(scales > 0)


def test_save_load_keras_format(trained, tmp_path):
    _, qat, _ = trained
    path = tmp_path / "qat.keras"
    qat.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x, _ = _data(16, seed=9)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
    assert [type(l).__name__ for l in loaded.layers] == [type(l).__name__ for l in qat.layers]
    assert loaded.get_layer("quant_bfnarrow").layer.merge_stages == [2, 1]


def test_jit_compile_training_matches_eager():
    """One jit-compiled training step equals one eager step; ranges and BN statistics move."""
    x, y = _data(16, seed=10)
    results = []
    for jit in (False, True):
        qat = quantize_model(small_model(), calibration_data=x)
        qat.compile(
            keras.optimizers.SGD(0.05),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit,
            run_eagerly=not jit,
        )
        before = [np.asarray(w).copy() for w in qat.weights]
        qat.train_on_batch(x, y)
        results.append((before, [np.asarray(w) for w in qat.weights], [w.path for w in qat.weights]))
    (b0, eager, paths), (_, jitted, _) = results
    moved = [p for p, w0, w1 in zip(paths, b0, eager) if not np.allclose(w0, w1)]
    assert any("moving_mean" in p for p in moved)
    assert any(p.endswith("output_min") or p.endswith("output_max") for p in moved)
    assert any("kernel" in p for p in moved)
    for p, w0, a, b in zip(paths, b0, eager, jitted):
        if "kernel" in p or "gamma" in p or "beta" in p or "bias" in p:
            # XLA's fake quant rounds its last multiply differently (1 ulp), which
            # can flip a rounding downstream: same step direction, not bitwise.
            ua, ub = (a - w0).ravel(), (b - w0).ravel()
            cosine = ua @ ub / (np.linalg.norm(ua) * np.linalg.norm(ub))
            assert cosine > 0.98, (p, cosine)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5, err_msg=p)


def test_sequential_and_dense_with_batch_norm():
    model = keras.Sequential(
        [
            keras.Input((12,)),
            keras.layers.Dense(16, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras_bft.ButterflyFusion(16),
            keras.layers.Dense(4),
            keras.layers.Softmax(),
        ]
    )
    _randomize_batch_norms(model)
    x = np.random.default_rng(0).standard_normal((32, 12)).astype("float32")
    qat = quantize_model(model, calibration_data=x)
    assert [type(l).__name__ for l in qat.layers[1:]] == [
        "ActivationQuantizer", "QuantizedLinear", "QuantizedLinear", "QuantizedLinear", "QuantizedOp",
    ]
    want = model.predict(x, verbose=0)
    got = qat.predict(x, verbose=0)
    assert np.abs(got - want).max() < 0.05
    # Softmax keeps TFLite's fixed output grid (1/256, zero point -128).
    got_grid = np.round(got * 256)
    np.testing.assert_allclose(got * 256, got_grid, atol=1e-3)


def test_errors_name_the_problem():
    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(4, 1, activation="relu")(inputs)
    x = keras.layers.BatchNormalization(name="late_bn")(x)
    with pytest.raises(ValueError, match="late_bn"):
        quantize_model(keras.Model(inputs, x))
    inputs = keras.Input((6, 3))
    y = keras.layers.LSTM(4, name="rnn")(inputs)
    with pytest.raises(ValueError, match="rnn.*LSTM"):
        quantize_model(keras.Model(inputs, y))
    with pytest.raises(ValueError, match="keras.Model"):
        quantize_model("model")
    with pytest.raises(ValueError, match="ema_decay"):
        quantize_model(keras.Model(inputs, inputs), ema_decay=1.5)
    with pytest.raises(ValueError, match="quantize_model"):
        calibrate(keras.Model(inputs, inputs), np.zeros((1, 6, 3), "float32"))


def test_no_tfmot_import():
    """Importing keras_bft.quantization must not import tfmot (which switches Keras to tf-keras)."""
    root = pathlib.Path(keras_bft.__file__).parent
    for path in root.rglob("*.py"):
        assert "tensorflow_model_optimization" not in path.read_text(), path
    code = (
        "import os, sys, keras_bft.quantization; "
        "assert 'tensorflow_model_optimization' not in sys.modules; "
        "assert os.environ.get('TF_USE_LEGACY_KERAS') is None"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root.parent)


def test_keras_bft_tflite_convert_without_representative_data(trained):
    from keras_bft import tflite

    _, qat, _ = trained
    x, _ = _data(8, seed=11)
    for io_type in ("float32", "int8"):
        blob = tflite.convert(qat, "int8", io_type=io_type).tflite_bytes
        interpreter = Interpreter(model_content=blob)
        types = {d["dtype"] for d in interpreter.get_input_details() + interpreter.get_output_details()}
        assert types == {np.float32 if io_type == "float32" else np.int8}
    report = tflite.verify(tflite.convert(qat, "int8"), qat, x, quantization="int8")
    assert report.fully_delegated, report
    assert report.top1_agreement >= 0.9, report
    assert set(report.op_histogram) >= {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "TRANSPOSE"}


def test_shufflenet_unit_split_and_shuffle_keep_their_input_grid():
    """ChannelSplit / ChannelShuffle (keras_bft.layers) are same-scale: no range, int8 SPLIT/TRANSPOSE."""
    from keras_bft.layers import ChannelShuffle
    from keras_bft.layers import ChannelSplit

    keras.utils.set_random_seed(4)
    inputs = keras.Input((6, 6, 16))
    left, right = ChannelSplit(name="split")(inputs)
    right = keras_bft.ButterflyFusion(8, name="bf")(right)
    right = keras.layers.BatchNormalization(name="bf_bn")(right)
    right = keras.layers.ReLU(name="bf_relu")(right)
    x = keras.layers.Concatenate(name="concat")([left, right])
    outputs = ChannelShuffle(name="shuffle")(x)
    model = keras.Model(inputs, outputs)
    _randomize_batch_norms(model)
    x = np.random.default_rng(1).uniform(-1, 1, (16, 6, 6, 16)).astype("float32")
    qat = quantize_model(model, calibration_data=x)
    kinds = {layer.name: type(layer).__name__ for layer in qat.layers}
    assert kinds["split"] == "ChannelSplit" and kinds["shuffle"] == "ChannelShuffle"
    assert not qat.get_layer("quant_bf").quantize_output  # the concatenation sets its range
    want = model.predict(x, verbose=0)
    got = qat.predict(x, verbose=0)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    content = _convert(qat)
    ops, lsb = _int8_ops(content)
    assert {op["op_name"] for op in ops} >= {"CONCATENATION", "TRANSPOSE", "CONV_2D"}
    assert np.abs(_run_tflite(content, x) - got).max() <= 2 * lsb


def test_hard_swish_hard_sigmoid_rescaling_convert_int8():
    """MobileNetV3's activations run as their int8 TFLite ops (MUL, ADD+RELU6, MUL), each intermediate ranged."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((6, 6, 8))
    x = keras.layers.Rescaling(0.5, offset=-1.0, name="rescale")(inputs)
    y = keras.layers.Conv2D(16, 1, name="conv")(x)
    y = keras.layers.Activation("hard_swish", name="hswish")(y)
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name="se_pool")(y)
    s = keras.layers.Conv2D(16, 1, name="se_conv")(s)
    s = keras.layers.Activation("hard_sigmoid", name="hsig")(s)
    outputs = keras.layers.Multiply(name="se_mul")([y, s])
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(2).uniform(0, 4, (16, 6, 6, 8)).astype("float32")
    qat = quantize_model(model, calibration_data=x)
    names = {v.path for v in qat.weights}
    assert {"quant_hswish/scaled_min", "quant_hswish/gate_min", "quant_hsig/gate_min", "quant_rescale/scaled_min"} <= names
    want = model.predict(x, verbose=0)
    got = qat.predict(x, verbose=0)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    content = _convert(qat)
    ops, lsb = _int8_ops(content)
    assert "HARD_SWISH" not in {op["op_name"] for op in ops}  # not delegated by XNNPACK in int8
    assert np.abs(_run_tflite(content, x) - got).max() <= 2 * lsb


def test_qat_model_with_softmax_names_the_way_out():
    from keras_bft import tflite

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    qat = quantize_model(keras.Model(inputs, outputs))
    with pytest.raises(ValueError, match=r"classifier_activation=None.*float_ops=\('SOFTMAX',\)"):
        tflite.convert(qat, "int8")
    assert "SOFTMAX" in tflite.op_histogram(tflite.convert(qat, "int8", float_ops=()))
