"""Every example runs (tiny settings), so none can rot."""

import importlib.util
import os

import keras
import numpy as np
import pytest

import keras_bft

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart(capsys):
    load_example("quickstart").main(["--steps", "2"])
    out = capsys.readouterr().out
    assert "Sequential CNN" in out and "functional block" in out and "in place of Dense" in out
    assert "same outputs" in out


def test_replace_pointwise(capsys):
    bft = load_example("replace_pointwise").main(["--size", "32", "--alpha", "0.35"])
    original = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)
    pointwise = [
        l.name for l in original.layers
        if type(l) is keras.layers.Conv2D and l.kernel_size == (1, 1) and l.strides == (1, 1)
    ]
    # Oracle: keras.applications' own layer list. 17 blocks have a project conv, 16 an expand, plus Conv_1.
    assert len(pointwise) == 34
    assert len(bft.layers) == len(original.layers)
    for layer, new in zip(original.layers, bft.layers):
        if layer.name in pointwise:
            assert isinstance(new, keras_bft.ButterflyFusion) and new.filters == layer.filters
        else:
            assert type(new) is type(layer)
    assert "Replaced 34 pointwise convs" in capsys.readouterr().out


def _image_folder(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(("dark", "light")):
        os.makedirs(os.path.join(root, name))
        for i in range(8):
            pixels = np.clip(rng.normal(50 + 150 * c, 10, (20, 20)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, name, f"{i}.png"))


def test_train_on_image_folder_then_convert(tmp_path, capsys):
    root = str(tmp_path / "images")
    _image_folder(root)
    saved = str(tmp_path / "model.keras")
    model, accuracy = load_example("train").main(
        ["--data-dir", root, "--builder", "MobileNetV1BFT", "--width", "0.25", "--epochs", "1",
         "--batch-size", "8", "--eager", "--output", saved]
    )
    assert 0.0 <= accuracy <= 1.0 and model.output_shape == (None, 2)
    loaded = keras.saving.load_model(saved, safe_mode=True)
    assert any(isinstance(l, keras_bft.ButterflyFusion) for l in loaded.layers)
    x = np.random.default_rng(1).random((2, 32, 32, 1), dtype=np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    with pytest.raises(SystemExit):  # refuses to overwrite without --force
        load_example("train").main(["--data-dir", root, "--output", saved])

    out = str(tmp_path / "model.tflite")
    report, rows = load_example("convert_for_android").main(
        ["--model", saved, "--output", out, "--calibration-images", "16", "--verify-images", "4",
         "--benchmark-runs", "3"]
    )
    assert os.path.getsize(out) > 0 and report.fully_delegated is True
    assert report.top1_agreement is not None and report.snr_db > 10
    assert {r["threads"] for r in rows} == {1, 2} and all(r["median_ms"] > 0 for r in rows)
    assert "Wrote" in capsys.readouterr().out


def test_pretrained_to_bft(tmp_path, capsys):
    out = load_example("pretrained_to_bft").main(
        ["--width", "0.35", "--epochs", "1", "--distill-epochs", "2", "--train-per-class", "8",
         "--test-per-class", "8", "--batch-size", "40", "--eager", "--output-dir", str(tmp_path)]
    )
    report = out["report"]
    # MobileNetV2 0.35 at 32x32: the 1x1s with >= 64 in and out channels (block_16_project, Conv_1).
    assert {r.path for r in report.layers} >= {"block_16_project", "Conv_1"}
    assert all(0 < r.rel_error < 2 for r in report.layers)
    assert out["distill_loss"][-1] < out["distill_loss"][0]
    assert all(0.0 <= out[k] <= 1.0 for k in ("teacher_accuracy", "swapped_accuracy", "student_accuracy"))
    loaded = keras.saving.load_model(str(tmp_path / "bft.keras"), safe_mode=True)
    assert isinstance(loaded.get_layer("Conv_1"), keras_bft.ButterflyFusion)
    assert os.path.getsize(out["tflite_path"]) > 0 and out["verify"].snr_db > 10
    assert "Right after the swap" in capsys.readouterr().out
