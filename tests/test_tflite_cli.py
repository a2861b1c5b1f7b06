"""`keras-bft convert` / `keras-bft benchmark`: success paths and every error path, nothing half-written."""

import json
import os

import keras
import numpy as np
import pytest

from keras_bft import ButterflyFusion
from keras_bft.tflite import cli
from keras_bft.tflite import graph


def _save_model(path, channels=16):
    inputs = keras.Input((6, 6, channels))
    x = ButterflyFusion(channels, butterfly_k=4)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    model = keras.Model(inputs, x)
    model.save(path)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    path = str(folder / "m.keras")
    _save_model(path)
    data = str(folder / "calib.npy")
    np.save(data, np.random.default_rng(0).uniform(-1, 1, (8, 6, 6, 16)).astype("float32"))
    return path, data


def test_convert_int8_then_refuses_to_overwrite_without_force(saved, tmp_path, capsys):
    model, data = saved
    out = str(tmp_path / "m.tflite")
    assert cli.main(["convert", model, "-o", out, "--quantize", "int8", "--calibration", data]) == 0
    blob = open(out, "rb").read()
    assert "CONV_2D" in graph.op_histogram(blob)
    assert "fully delegated True" in capsys.readouterr().out
    # Existing output, no --force: error, file untouched.
    assert cli.main(["convert", model, "-o", out]) != 0
    assert "--force" in capsys.readouterr().err
    assert open(out, "rb").read() == blob
    assert cli.main(["convert", model, "-o", out, "--force"]) == 0
    assert open(out, "rb").read() != blob  # now the float32 model
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_convert_int8_without_calibration_fails(saved, tmp_path, capsys):
    out = tmp_path / "m.tflite"
    assert cli.main(["convert", saved[0], "-o", str(out), "--quantize", "int8"]) != 0
    assert "--calibration" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("content", [b"not a zip at all", b"PK\x03\x04 truncated zip"])
def test_convert_corrupt_input_fails_cleanly(tmp_path, capsys, content):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(content)
    out = tmp_path / "m.tflite"
    assert cli.main(["convert", str(bad), "-o", str(out)]) != 0
    assert "bad.keras" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["bad.keras"]


def test_convert_non_keras_and_unknown_layer_fail(tmp_path, capsys):
    other = tmp_path / "weights.h5"
    other.write_bytes(b"\x89HDF\r\n")
    assert cli.main(["convert", str(other), "-o", str(tmp_path / "a.tflite")]) != 0
    assert ".keras" in capsys.readouterr().err

    class Unregistered(keras.layers.Layer):
        def call(self, inputs):
            return inputs * 2.0

    inputs = keras.Input((4,))
    path = str(tmp_path / "unknown.keras")
    keras.Model(inputs, Unregistered()(inputs)).save(path)
    out = tmp_path / "b.tflite"
    assert cli.main(["convert", path, "-o", str(out)]) != 0
    assert "Unregistered" in capsys.readouterr().err
    assert not out.exists()


def test_benchmark_two_models_writes_json_and_markdown(saved, tmp_path, capsys):
    model, _ = saved
    first, second = str(tmp_path / "a.tflite"), str(tmp_path / "b.tflite")
    assert cli.main(["convert", model, "-o", first, "--no-verify"]) == 0
    assert cli.main(["convert", model, "-o", second, "--no-verify", "--no-optimize"]) == 0
    out_json, out_md = str(tmp_path / "r.json"), str(tmp_path / "r.md")
    code = cli.main(
        ["benchmark", first, second, "--threads", "1,2", "--runs", "6", "--rounds", "3",
         "--warmup", "1", "--json", out_json, "--markdown", out_md]
    )
    assert code == 0
    rows = json.load(open(out_json))
    assert [(r["name"], r["threads"]) for r in rows] == [
        ("a.tflite", 1), ("b.tflite", 1), ("a.tflite", 2), ("b.tflite", 2)
    ]
    for row in rows:
        assert row["runs"] == 6 and row["median_ms"] > 0 and row["p90_ms"] >= row["median_ms"]
        assert row["size_bytes"] == os.path.getsize(str(tmp_path / row["name"]))
    assert rows[0]["ratio"] == 1.0
    assert rows[1]["ratio"] == pytest.approx(rows[1]["median_ms"] / rows[0]["median_ms"])
    table = open(out_md).read()
    assert "| a.tflite | 1 |" in table and "| b.tflite | 2 |" in table
    # Existing outputs without --force, a missing model, bad --threads: errors.
    assert cli.main(["benchmark", first, "--json", out_json]) != 0
    assert cli.main(["benchmark", str(tmp_path / "missing.tflite")]) != 0
    with pytest.raises(SystemExit):
        cli.main(["benchmark", first, "--threads", "0"])
