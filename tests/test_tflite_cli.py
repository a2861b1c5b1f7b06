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
    printed = capsys.readouterr().out
    assert "fully delegated True" in printed and f"Wrote {out}" in printed
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
    capsys.readouterr()
    code = cli.main(
        ["benchmark", first, second, "--threads", "1,2", "--runs", "6", "--rounds", "3",
         "--warmup", "1", "--json", out_json, "--markdown", out_md]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert f"Wrote {out_json}" in printed and f"Wrote {out_md}" in printed
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


def _run_cli(args, **kwargs):
    """`keras-bft ARGS` in a fresh process, its stdout a pipe (as in `... | tee log`)."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "keras_bft.cli", *args], capture_output=True, text=True, timeout=600, **kwargs
    )


def test_help_loads_neither_tensorflow_nor_keras_and_prints_no_log_lines():
    import subprocess
    import sys

    probe = (
        "import sys, contextlib, io\n"
        "from keras_bft import cli\n"
        "for argv in (['--help'], ['convert', '--help'], ['benchmark', '--help'], ['demo', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        cli.main(argv)\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "[]", (run.stdout, run.stderr)
    for args in (["--help"], ["convert", "--help"]):
        run = _run_cli(args)
        assert run.returncode == 0 and run.stderr == "", run.stderr
    assert "--input-shape" in run.stdout and "--preprocess" in run.stdout


def test_convert_two_head_model_with_dynamic_input_through_a_pipe(tmp_path):
    inputs = keras.Input((None, None, 8), name="image")
    x = ButterflyFusion(8)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, {
        "boxes": keras.layers.Dense(4, name="box_head")(x),
        "classes": keras.layers.Dense(3, activation="softmax", name="class_head")(x),
    })
    path = str(tmp_path / "heads.keras")
    model.save(path)
    calib = str(tmp_path / "calib.npy")
    np.save(calib, np.random.default_rng(0).uniform(-1, 1, (6, 6, 6, 8)).astype("float32"))
    out = str(tmp_path / "heads.tflite")
    run = _run_cli(["convert", path, "-o", out])
    assert run.returncode == 2 and "--input-shape" in run.stderr and not os.path.exists(out)
    run = _run_cli(["convert", path, "-o", out, "--input-shape", "6,6,8", "--quantize", "int8",
                    "--calibration", calib])
    assert run.returncode == 0, run.stderr[-3000:]
    assert "\x1b[" not in run.stdout  # readable in a file: no ANSI codes
    assert "boxes: max rel error" in run.stdout and "classes: max rel error" in run.stdout
    assert f"Wrote {out}" in run.stdout
    from ai_edge_litert.interpreter import Interpreter

    assert Interpreter(model_path=out).get_signature_list() == {
        "serving_default": {"inputs": ["image"], "outputs": ["boxes", "classes"]}
    }
    assert graph.io_types(out)[0] == ["float32"]


def test_convert_a_mixed_precision_model(tmp_path, capsys):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        inputs = keras.Input((6, 6, 8))
        x = keras.layers.GlobalAveragePooling2D()(ButterflyFusion(8)(inputs))
        model = keras.Model(inputs, keras.layers.Dense(3, dtype="float32")(x))
    finally:
        keras.config.set_dtype_policy(previous)
    path = str(tmp_path / "mixed.keras")
    model.save(path)
    out = str(tmp_path / "mixed.tflite")
    assert cli.main(["convert", path, "-o", out]) == 0, capsys.readouterr().err
    assert graph.io_types(out) == (["float32"], ["float32"])


def test_benchmark_threads_12_means_twelve_and_files_get_the_umask_mode(saved, tmp_path, capsys):
    model, _ = saved
    first = str(tmp_path / "a.tflite")
    previous = os.umask(0o022)
    try:
        assert cli.main(["convert", model, "-o", first, "--no-verify"]) == 0
        out_json = str(tmp_path / "r.json")
        assert cli.main(["benchmark", first, "--threads", "12", "--runs", "2", "--rounds", "1",
                         "--warmup", "0", "--json", out_json]) == 0
    finally:
        os.umask(previous)
    assert [row["threads"] for row in json.load(open(out_json))] == [12]
    for path in (first, out_json):
        assert os.stat(path).st_mode & 0o777 == 0o644
