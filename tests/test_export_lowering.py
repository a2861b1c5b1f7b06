"""The exporter's lowering decisions: one per layer, followed by PTQ and QAT alike, chosen for an objective.

Oracles: the forms written into the .tflite files (filter shapes read from the
flatbuffer), the byte counts of converted files, and the caller's model as it
was before converting.
"""

import collections
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from keras_bft import ButterflyFusion
from keras_bft import applications
from keras_bft import quantization
from keras_bft import tflite
from keras_bft.layers import ChannelSplit
from keras_bft.tflite import cost_model
from keras_bft.tflite import export_layers
from keras_bft.tflite import search
from keras_bft.tflite import synthetic

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _data(model, count=8, seed=0):
    shape = model.input_shape[1:]
    return np.random.default_rng(seed).uniform(-1, 1, (count, *shape)).astype("float32")


def _ops(blob):
    """`(op name, [input tensors])` of the main subgraph, read from the flatbuffer."""
    model = schema.Model.GetRootAs(blob, 0)
    graph = model.Subgraphs(0)
    result = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = _OP_NAMES[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        inputs = [graph.Tensors(op.Inputs(j)) if op.Inputs(j) >= 0 else None for j in range(op.InputsLength())]
        result.append((name, inputs, model))
    return result


def _filter_shapes(blob):
    """Filter shapes of every CONV_2D and FULLY_CONNECTED, as `(out, in per group)`, sorted."""
    shapes = []
    for name, inputs, _ in _ops(blob):
        if name in ("CONV_2D", "FULLY_CONNECTED"):
            shape = tuple(inputs[1].ShapeAsNumpy())
            shapes.append((shape[0], int(np.prod(shape[1:]))))
    return sorted(shapes)


def _decision_filters(decision, layer):
    """The filter shapes `(out, in per group)` a decision puts in the file."""
    plan = layer.plan
    if decision.kind == "dense":
        return [(plan.out_channels, plan.in_channels)]
    return [(s.out_channels, s.group_in) for s in plan.merge(decision.merge_stages).stages]


BUILDERS = [
    ("MobileNetV1", 0.25),
    ("MobileNetV2", 0.35),
    ("MobileNetV3Small", 0.5),
    ("ShuffleNetV2", 0.5),
]


@pytest.mark.parametrize("size, objective", [(32, "latency"), (64, "size")])
@pytest.mark.parametrize("family, width", BUILDERS)
def test_ptq_and_qat_exports_have_the_same_forms(family, width, size, objective):
    model = getattr(applications, family + "BFT")(
        (size, size, 3), width=width, classes=10, classifier_activation=None, weights=None
    )
    synthetic.randomize_batchnorm(model)
    data = _data(model)
    converted = tflite.convert(
        model, "int8", representative_data=data, objective=objective
    )
    ptq, ptq_report = converted.tflite_bytes, converted.report
    qat_model = quantization.quantize_model(model, calibration_data=data, objective=objective)
    converted = tflite.convert(qat_model, "int8")
    qat, qat_report = converted.tflite_bytes, converted.report

    butterflies = {layer.name: layer for layer in model.layers if isinstance(layer, ButterflyFusion)}
    assert sorted(d.layer for d in ptq_report) == sorted(butterflies)
    by_name = {d.layer: d for d in qat_report}
    for decision in ptq_report:
        assert decision.same_form(by_name[decision.layer]), (decision, by_name[decision.layer])
        assert by_name[decision.layer].chosen_by == "quantize_model"
    # The files hold those forms: every butterfly's filters, and the same filters overall.
    ptq_filters, qat_filters = _filter_shapes(ptq), _filter_shapes(qat)
    assert ptq_filters == qat_filters
    expected = collections.Counter()
    for decision in ptq_report:
        expected.update(_decision_filters(decision, butterflies[decision.layer]))
    assert not expected - collections.Counter(ptq_filters)
    if objective == "size":  # both kinds of form are exercised
        assert {d.kind for d in ptq_report} == {"dense", "stages"}
    report = tflite.verify(qat, qat_model, data[:4], quantization="int8")
    assert report.fully_delegated and report.top1_agreement >= 0.75, report


def _small_model(channels=256, size=8):
    """Two butterflies (a wide one that stays staged at 8x8, a narrow one), BN, hard-swish, a split."""
    inputs = keras.Input((size, size, channels), name="image")
    x = ButterflyFusion(channels, butterfly_k=4, name="wide")(inputs)
    x = keras.layers.BatchNormalization(name="wide_bn")(x)
    x = keras.layers.Activation("hard_swish", name="hswish")(x)
    left, right = ChannelSplit(name="split")(x)
    right = ButterflyFusion(channels // 2, butterfly_k=4, name="narrow")(right)
    x = keras.layers.Concatenate(name="concat")([left, right])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return synthetic.randomize_batchnorm(keras.Model(inputs, keras.layers.Dense(10, name="head")(x)))


def _snapshot(model):
    return [
        (
            layer.name,
            len(layer._inbound_nodes),  # Keras has no public node count; `output` below is the public check
            keras.tree.map_structure(lambda t: tuple(t.shape), layer.output),
            repr(layer.get_config()),
            [np.array(w) for w in layer.get_weights()],
        )
        for layer in model.layers
    ]


def test_converting_leaves_the_callers_model_untouched():
    model = _small_model()
    before = _snapshot(model)
    data = _data(model)
    for quantization_name in ("float32", "int8"):
        tflite.convert(model, quantization_name, representative_data=data)
    export, report = tflite.prepare_for_export(model, "int8", [(1, 8, 8, 256)])
    assert export is not model and len(report) == 2
    after = _snapshot(model)
    for (name, nodes, shape, config, weights), (_, nodes2, shape2, config2, weights2) in zip(before, after):
        assert nodes == nodes2 == 1, name
        assert shape == shape2 and config == config2, name
        assert all(np.array_equal(a, b) for a, b in zip(weights, weights2)), name
    # The model still builds sub-models from its layers (one inbound node each).
    keras.Model(model.input, model.get_layer("wide_bn").output)
    # And quantizing after converting works (the demo no longer orders its steps around the exporter).
    quantization.quantize_model(model, calibration_data=data)


class SubclassedNet(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fuse = ButterflyFusion(32, butterfly_k=4)
        self.bn = keras.layers.BatchNormalization()
        self.pool = keras.layers.GlobalAveragePooling2D()

    def call(self, inputs, training=None):
        return self.pool(self.bn(self.fuse(inputs), training=training))


def test_subclassed_model_is_exported_as_trained_with_a_message():
    model = SubclassedNet()
    data = np.random.default_rng(0).uniform(-1, 1, (4, 6, 6, 32)).astype("float32")
    model(data)
    with pytest.warns(UserWarning, match="functional model"):
        converted = tflite.convert(model, input_shape=(6, 6, 32))
        blob, report = converted.tflite_bytes, converted.report
    assert not report.decisions
    assert "SubclassedNet" in report.notes[0] and "exported as trained" in report.notes[0]
    got = tflite.predict(blob, data[:2])
    want = np.asarray(model(data[:2]))
    np.testing.assert_allclose(np.concatenate(got), want, rtol=1e-4, atol=1e-4)


def test_objectives_trade_time_for_bytes():
    model = applications.MobileNetV2BFT(
        (32, 32, 1), width=1.0, classes=10, classifier_activation=None, weights=None
    )
    shapes = [(1, 32, 32, 1)]
    reports = {o: tflite.plan_lowering(model, "int8", shapes, o) for o in search.OBJECTIVES}

    def total(report, field):
        return sum(getattr(d, field) for d in report)

    # size: no butterfly takes more bytes than its trained stages.
    assert all(d.bytes <= d.keras_bytes for d in reports["size"])
    # latency: each layer in its fastest form.
    for fast, small in zip(reports["latency"], reports["size"]):
        assert fast.predicted_us <= small.predicted_us + 1e-9
    # balanced: within the budget over the size choice, and between the two in time.
    assert total(reports["balanced"], "bytes") <= search.BALANCED_SIZE_BUDGET * total(reports["size"], "bytes")
    assert total(reports["latency"], "predicted_us") <= total(reports["balanced"], "predicted_us")
    assert total(reports["balanced"], "predicted_us") <= total(reports["size"], "predicted_us")
    # The demo's BFT-1 at 32x32: every butterfly folds for latency, and the report says so.
    assert all(d.kind == "dense" for d in reports["latency"])
    text = str(reports["latency"])
    assert "34/34 butterflies folded to dense" in text and "objective='size'" in text
    rows = reports["size"].summary()
    assert sum(row["layers"] for row in rows.values()) == 34
    assert reports["size"].export_weights == model.count_params() + total(reports["size"], "weights") - total(
        reports["size"], "keras_weights"
    )
    with pytest.raises(ValueError, match="objective.*'fast'"):
        tflite.convert(model, objective="fast")


def test_size_objective_makes_a_smaller_file_than_latency():
    model = applications.MobileNetV2BFT(
        (32, 32, 1), width=1.0, classes=10, classifier_activation=None, weights=None
    )
    synthetic.randomize_batchnorm(model)
    data = _data(model)
    sizes, reports = {}, {}
    for objective in ("latency", "size"):
        converted = tflite.convert(
            model, "int8", representative_data=data, objective=objective
        )
        blob, reports[objective] = converted.tflite_bytes, converted.report
        sizes[objective] = len(blob)
    predicted = {o: sum(d.bytes - d.keras_bytes for d in r) for o, r in reports.items()}
    # The byte model predicts the difference between the two files (weights + per-channel metadata).
    measured = sizes["latency"] - sizes["size"]
    assert measured > 1_000_000
    assert abs(measured - (predicted["latency"] - predicted["size"])) < 0.05 * measured


def test_storage_bytes_are_what_the_converter_writes():
    # One grouped conv (the stages of a 256-channel [16, 16] butterfly) and one dense 1x1 conv.
    x = keras.Input((8, 8, 256), batch_size=1)
    layer = ButterflyFusion(256, radices=[16, 16], use_bias=True)
    layer.build(x.shape)
    staged = keras.Model(x, export_layers.staged_export_layer(layer, (1, 1))(x))
    dense = keras.Model(x, keras.layers.Conv2D(64, 1)(x))
    data = _data(staged)
    for model in (staged, dense):
        blob = tflite.convert(model, "int8", representative_data=data, optimize=False).tflite_bytes
        for name, inputs, flatbuffer in _ops(blob):
            if name != "CONV_2D":
                continue
            filt, bias = inputs[1], inputs[2]
            out_channels, weights = filt.ShapeAsNumpy()[0], int(np.prod(filt.ShapeAsNumpy()))
            stored = 0
            for tensor in (filt, bias):
                q = tensor.Quantization()
                stored += flatbuffer.Buffers(tensor.Buffer()).DataLength()
                stored += 4 * q.ScaleLength() + 8 * q.ZeroPointLength()
            assert stored == cost_model.conv_bytes("int8", weights, out_channels)


def test_quantize_model_follows_a_given_report():
    model = _small_model()
    report = tflite.plan_lowering(model, "int8", [(1, 8, 8, 256)], objective="size")
    qat = quantization.quantize_model(model, lowering=report)
    _, qat_report = tflite.prepare_for_export(qat, "int8", [(1, 8, 8, 256)])
    assert [d.layer for d in qat_report] == [d.layer for d in report]
    assert all(a.same_form(b) for a, b in zip(report, qat_report))
    # objective=None keeps each butterfly as trained.
    kept = quantization.quantize_model(model, objective=None)
    _, kept_report = tflite.prepare_for_export(kept, "int8", [(1, 8, 8, 256)])
    assert all(d.form == "stages" for d in kept_report)


def test_cli_prints_the_report_and_takes_the_objective(tmp_path):
    model = _small_model(channels=64)
    path = str(tmp_path / "m.keras")
    model.save(path)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = tmp_path / "m.tflite"
    result = subprocess.run(
        [sys.executable, "-m", "keras_bft.cli", "convert", path, "-o", str(out), "--objective", "size",
         "--no-verify"],
        capture_output=True, text=True, env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "objective='size'" in result.stdout and "ButterflyFusion layer(s)" in result.stdout
    assert out.exists()
    result = subprocess.run(
        [sys.executable, "-m", "keras_bft.cli", "convert", path, "-o", str(tmp_path / "x.tflite"),
         "--objective", "fast"],
        capture_output=True, text=True, env=env,
    )
    assert result.returncode == 2 and "--objective" in result.stderr and "fast" in result.stderr


def test_cli_objectives_are_the_searchs():
    import argparse

    from keras_bft.tflite import cli

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["convert", "m.keras", "-o", "m.tflite"]).objective == "latency"
    for objective in search.OBJECTIVES:
        args = parser.parse_args(["convert", "m.keras", "-o", "m.tflite", "--objective", objective])
        assert args.objective == objective


def test_channel_layers_moved_and_old_files_load(tmp_path):
    import zipfile

    from keras_bft import applications as apps
    from keras_bft import layers

    assert apps.ChannelSplit is layers.ChannelSplit and apps.ChannelShuffle is layers.ChannelShuffle
    inputs = keras.Input((4, 4, 6))
    left, right = layers.ChannelSplit(name="split")(inputs)
    outputs = layers.ChannelShuffle(3, name="shuffle")(keras.layers.Concatenate()([right, left]))
    model = keras.Model(inputs, outputs)
    path = tmp_path / "new.keras"
    model.save(path)
    # A file written when the layers lived in keras_bft.applications.layers.
    old = tmp_path / "old.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                text = data.decode().replace('"keras_bft.layers.channel"', '"keras_bft.applications.layers"')
                assert "keras_bft.applications.layers" in text
                data = text.encode()
            dst.writestr(item, data)
    x = np.arange(96, dtype="float32").reshape(1, 4, 4, 6)
    for file in (path, old):
        loaded = keras.saving.load_model(file, safe_mode=True)
        np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
        assert type(loaded.get_layer("split")) is layers.ChannelSplit
