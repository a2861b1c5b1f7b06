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
    blob = tflite.convert(model, quantization, representative_data=data).tflite_bytes
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
    result = tflite.convert(model, "int8", representative_data=data)
    blob, decisions = result.tflite_bytes, result.report
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
    result = tflite.convert(
        model, "int8", representative_data=data, io_type="int8", cost_model=fewest_macs,
    )
    blob, decisions = result.tflite_bytes, result.report
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
    # Seeded: top-1 agreement on 4 images of an untrained model flips on a near-tie for some random inits.
    keras.utils.set_random_seed(0)
    model = small_model(channels=3, filters=16)
    data = _data(model, 8)
    dataset = tf.data.Dataset.from_tensor_slices((data, np.zeros(8))).batch(4)
    result = tflite.convert(model, "int8", representative_data=dataset)
    assert tflite.verify(result, model, data[:4], "int8", check_delegation=False).passed
    for i in range(4):
        keras.utils.save_img(tmp_path / f"img{i}.png", (data[i] + 1) * 127.5, scale=False)
    result = tflite.convert(model, "int8", representative_data=str(tmp_path), preprocess=lambda a: a / 127.5 - 1)
    assert tflite.verify(result, model, data[:4], "int8", check_delegation=False).passed
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
    result = tflite.convert(model, output_path=out, overwrite=True)
    assert out.read_bytes() == result.tflite_bytes and result.path == str(out)
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
    blob = tflite.convert(model).tflite_bytes
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
    assert "HARD_SWISH" not in graph.op_histogram(blob)  # the ConversionResult itself
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
        blob = tflite.convert(model, quantization, representative_data=data).tflite_bytes
        assert "SPLIT_V" not in graph.op_histogram(blob)  # XNNPACK has no SPLIT_V
        report = tflite.verify(blob, model, data[:4], quantization=quantization)
        assert report.passed and report.fully_delegated


# ---------------------------------------------------------------- signatures and multi-output (issue 10, items 1-2)


def two_head_model(channels=16):
    """A BFT backbone with a dict of two heads (the detection scenario): boxes and classes."""
    inputs = keras.Input((6, 6, channels), name="image")
    x = ButterflyFusion(channels, butterfly_k=4)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = {
        "boxes": keras.layers.Dense(4, name="box_head")(x),
        "classes": keras.layers.Dense(5, activation="softmax", name="class_head")(x),
    }
    return synthetic.randomize_batchnorm(keras.Model(inputs, outputs, name="two_heads"))


def two_input_list_output_model():
    """Inputs and outputs whose names do not sort in the model's order."""
    zeta = keras.Input((6, 6, 8), name="zeta")
    alpha = keras.Input((3,), name="alpha")
    x = keras.layers.GlobalAveragePooling2D()(ButterflyFusion(8)(zeta))
    x = keras.layers.Concatenate()([x, alpha])
    outputs = [keras.layers.Dense(3, name="second")(x), keras.layers.Dense(2, name="first")(x)]
    return keras.Model([zeta, alpha], outputs, name="two_inputs")


def _signature(result):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=result.tflite_bytes).get_signature_list()


def test_every_file_has_a_serving_default_signature_with_the_keras_names():
    model = small_model(channels=8, filters=8)
    result = tflite.convert(model)
    inputs, outputs = model.inputs[0].name, model.output_names[0]
    assert _signature(result) == {"serving_default": {"inputs": [inputs], "outputs": [outputs]}}
    assert result.input_names == (inputs,) and result.output_names == (outputs,)

    two = two_head_model()
    data = _data(two, 8)
    for quantization in ("float32", "int8"):
        result = tflite.convert(two, quantization, representative_data=data)
        assert _signature(result) == {
            "serving_default": {"inputs": ["image"], "outputs": ["boxes", "classes"]}
        }
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=result.tflite_bytes).get_signature_runner("serving_default")
    assert set(runner.get_input_details()) == {"image"}
    assert set(runner.get_output_details()) == {"boxes", "classes"}


def test_the_conversion_path_is_not_the_deprecated_one(caplog):
    import logging

    model = small_model(channels=8, filters=8)
    with caplog.at_level(logging.WARNING):
        tflite.convert(model)
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()], caplog.text


def test_dict_outputs_round_trip_predict_and_verify_by_name():
    model = two_head_model()
    data = _data(model, 6)
    result = tflite.convert(model, "int8", representative_data=data)
    predicted = tflite.predict(result, data[:3])
    assert len(predicted) == 3 and list(predicted[0]) == ["boxes", "classes"]
    keras_out = model(data[:1], training=False)
    assert predicted[0]["boxes"].shape == (1, 4) and predicted[0]["classes"].shape == (1, 5)
    np.testing.assert_allclose(predicted[0]["classes"], keras_out["classes"], atol=0.05)
    report = tflite.verify(result, model, data[:4])  # quantization from the result: int8
    assert report.quantization == "int8" and report.passed, report
    assert list(report.outputs) == ["boxes", "classes"]
    # Top-1 only where the output is a classifier's (probabilities), not on box coordinates.
    assert report.outputs["boxes"].top1_agreement is None
    assert report.outputs["classes"].top1_agreement is not None
    assert report.top1_agreement == report.outputs["classes"].top1_agreement


def test_verify_reports_each_output_and_names_the_failing_one():
    model = two_head_model()
    data = _data(model, 3)
    result = tflite.convert(model)
    other = keras.Model(model.inputs, {
        "boxes": model.output["boxes"] * 2.0,  # a wrong box head
        "classes": model.output["classes"],
    })
    with pytest.raises(ValueError, match="output 'boxes': max relative error"):
        tflite.verify(result, other, data, check_delegation=False)
    with pytest.warns(UserWarning):
        report = tflite.verify(result, other, data, check_delegation=False, on_failure="warn")
    assert report.outputs["classes"].max_rel_error < 1e-4 < report.outputs["boxes"].max_rel_error


def test_list_outputs_and_inputs_keep_the_model_order():
    model = two_input_list_output_model()
    rng = np.random.default_rng(0)
    images, extra = rng.uniform(-1, 1, (5, 6, 6, 8)).astype("float32"), rng.uniform(-1, 1, (5, 3)).astype("float32")
    result = tflite.convert(model, "int8", representative_data=[images, extra])
    assert result.input_names == ("zeta", "alpha") and result.output_names == ("second", "first")
    samples = [[images[i : i + 1], extra[i : i + 1]] for i in range(5)]
    predicted = tflite.predict(result, samples)
    keras_out = model([images[:1], extra[:1]], training=False)
    assert isinstance(predicted[0], list) and [p.shape for p in predicted[0]] == [(1, 3), (1, 2)]
    for got, want in zip(predicted[0], keras_out):
        np.testing.assert_allclose(got, want, atol=0.1)
    by_name = tflite.predict(result, {"zeta": images, "alpha": extra})
    np.testing.assert_array_equal(by_name[1][0], predicted[1][0])
    assert tflite.verify(result, model, samples, check_delegation=False).passed


# ---------------------------------------------------------------- mixed precision (item 3)


def test_mixed_float16_model_exports_as_its_float32_twin():
    def build():
        inputs = keras.Input((6, 6, 8))
        x = ButterflyFusion(16, butterfly_k=4)(inputs)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Activation("hard_swish")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(4, dtype="float32")(x))

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = build()
    finally:
        keras.config.set_dtype_policy(previous)
    mixed.compile("adam", "mse")
    x = _data(mixed, 8)
    mixed.fit(x, np.random.default_rng(1).normal(size=(8, 4)), epochs=1, verbose=0)
    twin = build()
    twin.set_weights(mixed.get_weights())
    policies = [layer.dtype_policy.name for layer in mixed.layers]

    result = tflite.convert(mixed)
    report = tflite.verify(result, twin, x[:4], check_delegation=False)
    assert report.passed and report.max_rel_error < 1e-4, report
    assert [layer.dtype_policy.name for layer in mixed.layers] == policies  # caller's model unchanged
    assert keras.config.dtype_policy().name == previous.name
    int8 = tflite.convert(mixed, "int8", representative_data=x)
    assert tflite.verify(int8, twin, x[:4]).passed


def test_mixed_precision_model_without_config_names_the_policy_and_the_fix():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__(dtype="mixed_float16")
            self.dense = keras.layers.Dense(4, dtype="mixed_float16")

        def call(self, x):
            return self.dense(x)

    model = Subclassed()
    model(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="mixed_float16.*float32") as info:
        tflite.convert(model, input_shape=(3,))
    assert "set_dtype_policy('float32')" in str(info.value)


# ---------------------------------------------------------------- calibration (items 4-5)


def _overflow_script(value):
    return f"""
import numpy as np, keras
from keras_bft import tflite
inputs = keras.Input((4, 4, 16))
x = keras.layers.Conv2D(16, 1, kernel_initializer=keras.initializers.Constant(4.0))(inputs)
model = keras.Model(inputs, keras.layers.Conv2D(4, 1)(x))
data = np.full((4, 4, 4, 16), {value}, "float32")
try:
    tflite.convert(model, "int8", representative_data=data)
except ValueError as error:
    print("ERROR:", error)
    raise SystemExit(3)
print("CONVERTED")
"""


def test_calibration_that_overflows_inside_the_model_is_an_error_not_a_crash():
    import subprocess
    import sys

    # 1e38 is finite in float32, but 16 channels x 4.0 x 1e38 overflow the first conv's output:
    # TFLite's calibrator then aborts the process or quantizes with an infinite range.
    run = subprocess.run(
        [sys.executable, "-c", _overflow_script("1e38")], capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert run.returncode == 3, (run.returncode, run.stdout[-2000:], run.stderr[-2000:])
    assert "representative_data" in run.stdout and "out of float32's range" in run.stdout


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e39])
def test_non_finite_calibration_is_refused_before_conversion(bad):
    model = small_model(channels=8, filters=8)
    data = _data(model, 4).astype("float64")
    data[:] = bad  # all-NaN used to give a float model silently; 1e39 overflows float32
    with pytest.raises(ValueError, match="representative_data.*non-finite"):
        tflite.convert(model, "int8", representative_data=data)


def _input_range(result):
    """The float range the int8 input tensor can represent."""
    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(model_content=result.tflite_bytes).get_input_details()[0]
    scale, zero = detail["quantization"]
    return (-128 - zero) * scale, (127 - zero) * scale


def test_image_folder_calibration_follows_the_model_expected_range(tmp_path):
    pixels = np.random.default_rng(0).uniform(0, 255, (6, 8, 8, 3))
    for i, image in enumerate(pixels):
        keras.utils.save_img(tmp_path / f"{i}.png", image, scale=False)
    folder = str(tmp_path)
    # A model built from keras-bft's layers (as MobileNetV1/V2/ShuffleNetV2BFT) expects [-1, 1]:
    # the folder's pixels are scaled by default.
    model = small_model(channels=3, filters=16)
    low, high = _input_range(tflite.convert(model, "int8", representative_data=folder, io_type="int8"))
    assert -1.1 < low < -0.9 and 0.9 < high < 1.1
    # Stated explicitly: the same; raw pixels: the range the README example used to get, with a warning.
    low, high = _input_range(tflite.convert(
        model, "int8", representative_data=folder, io_type="int8", preprocess="scale:0.0078431373,-1"))
    assert -1.1 < low < -0.9 and 0.9 < high < 1.1
    with pytest.warns(UserWarning, match="far from the model's expected input range"):
        result = tflite.convert(model, "int8", representative_data=folder, io_type="int8", preprocess="none")
    assert _input_range(result)[1] > 200
    # A model starting with a Rescaling layer (MobileNetV3 builders, include_preprocessing=True)
    # takes pixels: no scaling by default.
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    rescaling = keras.Model(inputs, ButterflyFusion(8)(keras.layers.Conv2D(8, 1)(x)))
    assert _input_range(tflite.convert(rescaling, "int8", representative_data=folder, io_type="int8"))[1] > 200


def test_the_builders_say_what_range_they_expect():
    from keras_bft import applications
    from keras_bft.tflite import calibration

    for builder in (applications.MobileNetV1BFT, applications.MobileNetV2BFT, applications.ShuffleNetV2BFT):
        model = builder((32, 32, 3), classes=4)
        assert calibration.expected_input_range(model) == (-1.0, 1.0), builder.__name__
    v3 = applications.MobileNetV3SmallBFT((32, 32, 3), classes=4)
    assert calibration.expected_input_range(v3) == (0.0, 255.0)
    assert calibration.expected_input_range(small_model(fusion="pointwise")) is None  # unknown: not ours


# ---------------------------------------------------------------- files (item 6)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_have_the_umask_mode_like_keras_saves(tmp_path, umask):
    model = small_model(channels=8, filters=8)
    previous = os.umask(umask)
    try:
        tflite.convert(model, output_path=tmp_path / "m.tflite")
        model.save(tmp_path / "m.keras")
    finally:
        os.umask(previous)
    keras_mode = os.stat(tmp_path / "m.keras").st_mode & 0o777
    assert os.stat(tmp_path / "m.tflite").st_mode & 0o777 == 0o666 & ~umask == keras_mode


def test_an_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    model = small_model(channels=8, filters=8)
    out = tmp_path / "m.tflite"

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tflite.convert(model, output_path=out)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- public LiteRT APIs (item 10), results


def _benchmark_tool_verdict(blob, tmp_path):
    """The old oracle: LiteRT's benchmark tool's "Fully accelerated" line, in a subprocess."""
    import re
    import subprocess
    import sys

    path = tmp_path / "oracle.tflite"
    path.write_bytes(blob)
    run = subprocess.run(
        [sys.executable, "-m", "ai_edge_litert.tools.benchmark_litert_model", f"--model={path}",
         "--num_threads=1", "--num_runs=2", "--warmup_runs=1"],
        capture_output=True, text=True, timeout=300,
    )
    return re.search(r"Fully accelerated:\s*(True|False)", run.stdout + run.stderr).group(1) == "True"


def test_delegation_verdict_uses_the_compiled_model_api_and_agrees_with_the_benchmark_tool(tmp_path, monkeypatch):
    import subprocess

    model = small_model(channels=16, filters=16, head="softmax")
    data = _data(model, 8)
    delegated = tflite.convert(model, "int8", representative_data=data)
    # XNNPACK has no int8 SOFTMAX (keras-litert-facts.md): not fully delegated.
    undelegated = tflite.convert(model, "int8", representative_data=data, float_ops=())
    expected = [_benchmark_tool_verdict(r.tflite_bytes, tmp_path) for r in (delegated, undelegated)]
    assert expected == [True, False]

    def no_subprocess(*args, **kwargs):
        raise AssertionError("fully_delegated must not run a subprocess")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert [tflite.fully_delegated(r) for r in (delegated, undelegated)] == expected
    rows = tflite.benchmark([delegated, undelegated], threads=1, num_runs=2, rounds=1, warmup_runs=0, verbose=0)
    assert [row["fully_accelerated"] for row in rows] == expected


def test_conversion_result_is_accepted_everywhere_bytes_are(tmp_path):
    model = small_model(channels=8, filters=8)
    data = _data(model, 2)
    result = tflite.convert(model, output_path=tmp_path / "m.tflite")
    assert graph.read_bytes(result) == result.tflite_bytes == graph.read_bytes(result.path)
    assert tflite.op_histogram(result) == tflite.op_histogram(result.path)
    for source in (result, result.tflite_bytes, result.path):
        np.testing.assert_array_equal(tflite.predict(source, data)[0], tflite.predict(result, data)[0])
    assert tflite.verify(result, model, data, check_delegation=False).passed
    rows = tflite.benchmark(result, threads=12, num_runs=2, rounds=1, warmup_runs=0, verbose=0)
    assert [(row["name"], row["threads"]) for row in rows] == [("m.tflite", 12)]
    with pytest.raises(ValueError, match="threads"):
        tflite.benchmark(result, threads="12")  # once read as (1, 2)
