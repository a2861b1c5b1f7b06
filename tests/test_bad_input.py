"""Bad input, as a specification: one row per case.

Each row says what a user passed and what they must get back: the exception
type (or, for the command line, exit status 2 with the message on stderr) and
the words the message must contain — the argument or CLI flag that was wrong
and the value received. Every row also checks that nothing was left behind:
the case's output folder holds exactly what it held before the call.

Rows are grouped by the public surface they exercise; add a row to the table
of that surface (one line of data, no new test function).
"""

import dataclasses
import os

import keras
import numpy as np
import pytest

from keras_bft import ButterflyFusion
from keras_bft import cli as keras_bft_cli


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input.

    Attributes:
        id: the test id.
        call: `call(ctx)` makes the bad call (a Python call), or a list of
            command-line arguments for `keras-bft` in which `{out}`, `{model}`,
            `{tflite}`, `{calib}` are replaced by `ctx`'s paths.
        error: the exception type the call raises; `CLI` for a command line
            that must exit with status 2.
        names: substrings the error message (stderr for the CLI) must contain.
    """

    id: str
    call: object
    error: object
    names: tuple


CLI = "exit status 2"


class Context:
    """What a row can use: a tiny saved model and its .tflite, a calibration file, an output folder."""

    def __init__(self, fixtures, out):
        self.model_path = fixtures["model_path"]
        self.tflite_path = fixtures["tflite_path"]
        self.calib_path = fixtures["calib_path"]
        self.out = str(out)

    @property
    def model(self):
        return keras.saving.load_model(self.model_path)

    def format(self, text):
        return text.format(out=self.out, model=self.model_path, tflite=self.tflite_path, calib=self.calib_path)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    from keras_bft import tflite

    folder = tmp_path_factory.mktemp("bad_input_fixtures")
    inputs = keras.Input((6, 6, 16), name="image")
    x = ButterflyFusion(16, butterfly_k=4)(inputs)
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(inputs, keras.layers.ReLU()(x))
    model_path = str(folder / "m.keras")
    model.save(model_path)
    tflite_path = str(folder / "m.tflite")
    tflite.convert(model, output_path=tflite_path)
    calib_path = str(folder / "calib.npy")
    np.save(calib_path, np.random.default_rng(0).uniform(-1, 1, (8, 6, 6, 16)).astype("float32"))
    return {"model_path": model_path, "tflite_path": tflite_path, "calib_path": calib_path}


# ------------------------------------------------------------------ layer


def _call(layer, shape):
    """Calls `layer` on zeros of `shape`."""
    return layer(np.zeros(shape, "float32"))


def _plan(*args, **kwargs):
    from keras_bft.ops import plans

    return plans.make_plan(*args, **kwargs)


def _called_twice(first, second):
    layer = ButterflyFusion(8)
    _call(layer, first)
    return _call(layer, second)


LAYER_CASES = [
    Case("filters-zero", lambda ctx: ButterflyFusion(0), ValueError, ("filters", "0")),
    Case("butterfly_k-one", lambda ctx: ButterflyFusion(8, butterfly_k=1), ValueError, ("butterfly_k", "1")),
    Case("filters-bool", lambda ctx: ButterflyFusion(True), ValueError, ("filters=True",)),
    Case("butterfly_k-float", lambda ctx: ButterflyFusion(8, butterfly_k=4.0), ValueError, ("butterfly_k=4.0",)),
    Case("radices-string", lambda ctx: ButterflyFusion(8, radices="24"), ValueError, ("radices='24'",)),
    Case("radices-floats", lambda ctx: ButterflyFusion(8, radices=[2.5, 4]), ValueError, ("radices=[2.5, 4]",)),
    Case("radices-int", lambda ctx: ButterflyFusion(8, radices=8), ValueError, ("radices=8", "radices=[8]")),
    Case("radices-one", lambda ctx: ButterflyFusion(8, radices=[8, 1]), ValueError, ("radices=[8, 1]", ">= 2")),
    Case("radices-product", lambda ctx: _call(ButterflyFusion(8, radices=[3, 3]), (2, 8)), ValueError,
         ("radices=[3, 3]", "product 9", "= 8")),
    Case("radices-and-num_stages", lambda ctx: ButterflyFusion(8, radices=[2, 4], num_stages=2), ValueError,
         ("radices=[2, 4]", "num_stages=2", "not both")),
    Case("num_stages-float", lambda ctx: ButterflyFusion(8, num_stages=2.0), ValueError, ("num_stages=2.0",)),
    Case("num_stages-bool", lambda ctx: ButterflyFusion(8, num_stages=True), ValueError, ("num_stages=True",)),
    Case("num_stages-30-on-8-channels", lambda ctx: _call(ButterflyFusion(8, num_stages=30), (2, 8)), ValueError,
         ("num_stages=30", "8 channels")),
    Case("num_stages-8-pads-8-channels", lambda ctx: _call(ButterflyFusion(8, num_stages=8), (2, 8)), ValueError,
         ("num_stages=8", "at most 4 stages")),
    Case("merge_stages-floats", lambda ctx: ButterflyFusion(8, merge_stages=(1.9, 2.2)), ValueError,
         ("merge_stages=(1.9, 2.2)",)),
    Case("merge_stages-sum", lambda ctx: _call(ButterflyFusion(8, merge_stages=[5]), (2, 8)), ValueError,
         ("merge_stages=[5]", "number of stages (2)")),
    Case("data_format-unknown", lambda ctx: ButterflyFusion(8, data_format="NHWC"), ValueError,
         ("data_format='NHWC'",)),
    Case("lowering-unknown", lambda ctx: ButterflyFusion(8, lowering="fft"), ValueError, ("lowering='fft'",)),
    Case("call-rank-1", lambda ctx: _call(ButterflyFusion(8), (8,)), ValueError, ("ndim", "(8,)")),
    Case("call-unknown-channels", lambda ctx: ButterflyFusion(8).build((None, 4, None)), ValueError,
         ("must be known", "(None, 4, None)")),
    Case("call-other-channels", lambda ctx: _called_twice((2, 8), (2, 16)), ValueError, ("8", "(2, 16)")),
    Case("plan-num_stages", lambda ctx: _plan(8, 8, num_stages=30), ValueError, ("num_stages=30",)),
    Case("plan-in_channels", lambda ctx: _plan(0, 4), ValueError, ("in_channels=0",)),
    Case("plan-radices-float", lambda ctx: _plan(16, 16, radices=[4, 4.0]), ValueError, ("radices=[4, 4.0]",)),
    Case("plan-merge-segments", lambda ctx: _plan(16, 16, butterfly_k=4).merge((1, 2)), ValueError,
         ("segments=(1, 2)", "(2)")),
]

# ------------------------------------------------------------------ builders (keras_bft.applications)

def _builder(name, **kwargs):
    from keras_bft import applications

    return lambda ctx: getattr(applications, name)(**kwargs)


BUILDER_CASES = [
    Case("v1-width-inf", _builder("MobileNetV1BFT", width=float("inf")), ValueError, ("width", "inf")),
    Case("v1-width-nan", _builder("MobileNetV1BFT", width=float("nan")), ValueError, ("width", "nan")),
    Case("v1-alpha-inf", _builder("MobileNetV1BFT", alpha=float("inf")), ValueError, ("alpha", "inf")),
    Case("v1-width-1-and-alpha", _builder("MobileNetV1BFT", width=1.0, alpha=0.5), ValueError, ("alpha", "0.5")),
    Case("v1-width-too-small", _builder("MobileNetV1BFT", width=0.01), ValueError, ("width", "0.01")),
    Case("v2-input-shape-str", _builder("MobileNetV2BFT", input_shape="abc"), ValueError, ("input_shape", "'abc'")),
    Case("v2-input-shape-zero-channels", _builder("MobileNetV2BFT", input_shape=(32, 32, 0)), ValueError,
         ("input_shape", "(32, 32, 0)")),
    Case("v2-input-shape-rank-2", _builder("MobileNetV2BFT", input_shape=(32, 32)), ValueError,
         ("input_shape", "(32, 32)")),
    Case("v3-input-shape-negative", _builder("MobileNetV3SmallBFT", input_shape=(-32, 32, 3)), ValueError,
         ("input_shape", "(-32, 32, 3)")),
    Case("v3-input-shape-float", _builder("MobileNetV3LargeBFT", input_shape=(32.5, 32, 3)), ValueError,
         ("input_shape", "(32.5, 32, 3)")),
    Case("v3-dropout-and-dropout-rate", _builder("MobileNetV3SmallBFT", dropout=0.1, dropout_rate=0.3), ValueError,
         ("dropout_rate", "0.3")),
    Case("shufflenet-width-too-small", _builder("ShuffleNetV2BFT", width=0.01), ValueError, ("width", "0.01")),
    Case("v2-rectangular-unknown", _builder("MobileNetV2BFT", rectangular="max"), ValueError,
         ("rectangular", "'max'")),
    Case("v2-select-string", _builder("MobileNetV2BFT", select="block_1_expand"), ValueError,
         ("select", "'block_1_expand'")),
    Case("v2-select-unknown-name", _builder("MobileNetV2BFT", input_shape=(32, 32, 3), width=0.35,
                                             select=["block_1_expand", "no_such_layer"]), ValueError,
         ("select", "no_such_layer")),
]

# ------------------------------------------------------------------ convert (keras_bft.tflite.convert)


def _convert(ctx, **kwargs):
    from keras_bft import tflite

    return tflite.convert(ctx.model, **kwargs)


def _calibration(ctx, value, count=4, dtype="float32"):
    """`count` calibration samples of the fixture model's shape, all `value`."""
    return np.full((count, 6, 6, 16), value, dtype=dtype)


def _in_folder(files, call):
    """Runs `call(folder)` on a temporary folder holding `files` ({name: bytes}), outside ctx.out."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        for name, content in files.items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(content)
        return call(folder)


def _image_model():
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, keras.layers.Conv2D(4, 1)(inputs))


def _two_input_model():
    image, extra = keras.Input((6, 6, 16), name="image"), keras.Input((3,), name="extra")
    x = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(image), extra])
    return keras.Model([image, extra], keras.layers.Dense(2)(x))


CONVERT_CASES = [
    Case("convert-calibration-nan", lambda ctx: _convert(ctx, quantization="int8", representative_data=_calibration(ctx, np.nan)),
         ValueError, ("representative_data", "NaN", "array of shape (4, 6, 6, 16)")),
    Case("convert-calibration-inf", lambda ctx: _convert(ctx, quantization="int8", representative_data=_calibration(ctx, np.inf)),
         ValueError, ("representative_data", "inf", "array of shape (4, 6, 6, 16)")),
    Case("convert-calibration-1e39-overflows-float32", lambda ctx: _convert(ctx, quantization="int8", representative_data=_calibration(ctx, 1e39, dtype="float64")),
         ValueError, ("representative_data", "non-finite", "dtype float64")),
    Case("convert-calibration-wrong-shape", lambda ctx: _convert(ctx, quantization="int8", representative_data=np.zeros((4, 5, 5, 16), "float32")),
         ValueError, ("representative_data", "(5, 5, 16)", "(6, 6, 16)")),
    Case("convert-calibration-wrong-rank", lambda ctx: _convert(ctx, quantization="int8", representative_data=np.zeros((4, 16), "float32")),
         ValueError, ("representative_data", "(4, 16)")),
    Case("convert-calibration-no-samples", lambda ctx: _convert(ctx, quantization="int8", representative_data=np.zeros((0, 6, 6, 16), "float32")),
         ValueError, ("representative_data", "no samples", "(0, 6, 6, 16)")),
    Case("convert-calibration-strings", lambda ctx: _convert(ctx, quantization="int8", representative_data=np.full((2, 6, 6, 16), "a")),
         ValueError, ("representative_data", "<U1")),
    Case("convert-calibration-missing-folder", lambda ctx: _convert(ctx, quantization="int8", representative_data=os.path.join(ctx.out, "missing")),
         ValueError, ("representative_data", "missing")),
    Case("convert-calibration-folder-without-images", lambda ctx: _in_folder({"notes.txt": b"x"}, lambda d: _convert(ctx, quantization="int8", representative_data=d)),
         ValueError, ("representative_data", "without images")),
    Case("convert-calibration-corrupt-image", lambda ctx: _in_folder({"broken.png": b"not a png"}, lambda d: keras_bft_tflite().convert(_image_model(), "int8", representative_data=d)),
         ValueError, ("representative_data", "broken.png")),
    Case("convert-calibration-npy-of-objects", lambda ctx: _in_folder({}, lambda d: (np.save(os.path.join(d, "objects.npy"), np.array([{"a": 1}], dtype=object)), _convert(ctx, quantization="int8", representative_data=os.path.join(d, "objects.npy")))),
         ValueError, ("representative_data", "objects.npy")),
    Case("convert-calibration-not-npy", lambda ctx: _convert(ctx, quantization="int8", representative_data=ctx.model_path),
         ValueError, ("representative_data", "m.keras")),
    Case("convert-calibration-wrong-array-count", lambda ctx: keras_bft_tflite().convert(_two_input_model(), "int8", representative_data=[np.zeros((2, 6, 6, 16), "float32")]),
         ValueError, ("representative_data", "['image', 'extra']", "1 array")),
    Case("convert-calibration-dict-wrong-keys", lambda ctx: keras_bft_tflite().convert(_two_input_model(), "int8", representative_data={"image": np.zeros((2, 6, 6, 16)), "other": np.zeros((2, 3))}),
         ValueError, ("representative_data", "'other'")),
    Case("convert-int8-without-calibration", lambda ctx: _convert(ctx, quantization="int8"),
         ValueError, ("representative_data", "None")),
    Case("convert-output-path-empty", lambda ctx: _convert(ctx, output_path=""), ValueError, ("output_path", "''")),
    Case("convert-output-path-is-a-folder", lambda ctx: _convert(ctx, output_path=ctx.out), ValueError, ("output_path", "folder")),
    Case("convert-output-folder-missing", lambda ctx: _convert(ctx, output_path=os.path.join(ctx.out, "missing", "m.tflite")),
         ValueError, ("output_path", "missing", "does not exist")),
    Case("convert-output-folder-read-only", lambda ctx: _convert(ctx, output_path="/proc/m.tflite"), ValueError, ("output_path", "/proc/m.tflite")),
    Case("convert-quantization-unknown", lambda ctx: _convert(ctx, quantization="int4"), ValueError, ("quantization", "'int4'")),
    Case("convert-io-type-without-int8", lambda ctx: _convert(ctx, io_type="int8"), ValueError, ("io_type", "'int8'", "quantization='float32'")),
    Case("convert-batch-size-zero", lambda ctx: _convert(ctx, batch_size=0), ValueError, ("batch_size", "0")),
    Case("convert-input-shape-zero-dim", lambda ctx: _convert(ctx, input_shape=(6, 0, 16)), ValueError, ("input_shape", "(6, 0, 16)")),
    Case("convert-input-shape-conflicts", lambda ctx: _convert(ctx, input_shape=(7, 7, 16)), ValueError, ("input_shape", "(7, 7, 16)", "(6, 6, 16)")),
    Case("convert-input-shape-text", lambda ctx: _convert(ctx, input_shape="abc"), ValueError, ("input_shape", "'abc'")),
    Case("convert-preprocess-unknown", lambda ctx: _convert(ctx, quantization="int8", representative_data=ctx.calib_path, preprocess="scale:1"),
         ValueError, ("preprocess", "'scale:1'")),
    Case("convert-calibration-samples-zero", lambda ctx: _convert(ctx, quantization="int8", representative_data=ctx.calib_path, num_calibration_samples=0),
         ValueError, ("num_calibration_samples", "0")),
    Case("convert-float-ops-a-string", lambda ctx: _convert(ctx, float_ops="SOFTMAX"), ValueError, ("float_ops", "'SOFTMAX'")),
    Case("convert-model-not-a-model", lambda ctx: keras_bft_tflite().convert("m.keras"), ValueError, ("model", "'m.keras'")),
]


def keras_bft_tflite():
    from keras_bft import tflite

    return tflite

# ------------------------------------------------------------------ verify / predict


def _samples(count=2, shape=(6, 6, 16)):
    return np.random.default_rng(0).uniform(-1, 1, (count, *shape)).astype("float32")


VERIFY_CASES = [
    Case("verify-samples-wrong-shape", lambda ctx: keras_bft_tflite().verify(ctx.tflite_path, ctx.model, _samples(2, (5, 5, 16))),
         ValueError, ("sample_inputs", "(1, 5, 5, 16)", "(1, 6, 6, 16)")),
    Case("verify-no-samples", lambda ctx: keras_bft_tflite().verify(ctx.tflite_path, ctx.model, []), ValueError, ("sample_inputs", "list of 0 items")),
    Case("verify-on-failure-unknown", lambda ctx: keras_bft_tflite().verify(ctx.tflite_path, ctx.model, _samples(), on_failure="loud"),
         ValueError, ("on_failure", "'loud'")),
    Case("verify-quantization-unknown", lambda ctx: keras_bft_tflite().verify(ctx.tflite_path, ctx.model, _samples(), quantization="int4"),
         ValueError, ("quantization", "'int4'")),
    Case("verify-not-a-tflite-file", lambda ctx: keras_bft_tflite().verify(ctx.calib_path, ctx.model, _samples()),
         ValueError, ("tflite_model", "calib.npy", "TFL3")),
    Case("verify-classifier-outputs-unknown", lambda ctx: keras_bft_tflite().verify(ctx.tflite_path, ctx.model, _samples(), classifier_outputs=["nope"]),
         ValueError, ("classifier_outputs", "'nope'")),
]

PREDICT_CASES = [
    Case("predict-empty-bytes", lambda ctx: keras_bft_tflite().predict(b"", _samples()), ValueError, ("tflite_model", "0 bytes", "empty")),
    Case("predict-truncated-bytes", lambda ctx: keras_bft_tflite().predict(open(ctx.tflite_path, "rb").read()[:200], _samples()),
         ValueError, ("tflite_model", "200 bytes", "truncated")),
    Case("predict-text-file", lambda ctx: keras_bft_tflite().predict(ctx.model_path, _samples()), ValueError, ("tflite_model", "m.keras")),
    Case("predict-missing-file", lambda ctx: keras_bft_tflite().predict(os.path.join(ctx.out, "missing.tflite"), _samples()),
         ValueError, ("tflite_model", "missing.tflite")),
    Case("predict-not-a-model", lambda ctx: keras_bft_tflite().predict(42, _samples()), TypeError, ("tflite_model", "42")),
    Case("predict-two-arrays-for-one-input", lambda ctx: keras_bft_tflite().predict(ctx.tflite_path, [[_samples(1), _samples(1)]]),
         ValueError, ("sample_inputs", "2 array(s)", "['image']")),
    Case("predict-dict-wrong-keys", lambda ctx: keras_bft_tflite().predict(ctx.tflite_path, {"wrong": _samples()}),
         ValueError, ("sample_inputs", "'wrong'", "['image']")),
    Case("predict-not-numeric", lambda ctx: keras_bft_tflite().predict(ctx.tflite_path, [np.full((1, 6, 6, 16), "x")]),
         ValueError, ("sample_inputs", "not numeric")),
    Case("predict-a-string", lambda ctx: keras_bft_tflite().predict(ctx.tflite_path, "samples.npy"), ValueError, ("sample_inputs", "'samples.npy'")),
]

# ------------------------------------------------------------------ benchmark (keras_bft.tflite.benchmark)

BENCHMARK_CASES = [
    Case("benchmark-threads-a-string", lambda ctx: keras_bft_tflite().benchmark(ctx.tflite_path, threads="12"), ValueError, ("threads", "'12'")),
    Case("benchmark-threads-zero", lambda ctx: keras_bft_tflite().benchmark(ctx.tflite_path, threads=0), ValueError, ("threads", "(0,)")),
    Case("benchmark-runs-zero", lambda ctx: keras_bft_tflite().benchmark(ctx.tflite_path, num_runs=0), ValueError, ("num_runs", "0")),
    Case("benchmark-warmup-negative", lambda ctx: keras_bft_tflite().benchmark(ctx.tflite_path, warmup_runs=-1), ValueError, ("warmup_runs", "-1")),
    Case("benchmark-not-a-tflite-file", lambda ctx: keras_bft_tflite().benchmark([ctx.tflite_path, ctx.calib_path]), ValueError, ("models[1]", "calib.npy")),
    Case("benchmark-truncated-bytes", lambda ctx: keras_bft_tflite().benchmark(open(ctx.tflite_path, "rb").read()[:-300]),
         ValueError, ("models[0]", "truncated")),
    Case("benchmark-missing-file", lambda ctx: keras_bft_tflite().benchmark(os.path.join(ctx.out, "missing.tflite")), ValueError, ("models[0]", "missing.tflite")),
    Case("benchmark-no-models", lambda ctx: keras_bft_tflite().benchmark([]), ValueError, ("models", "[]")),
    Case("benchmark-names-count", lambda ctx: keras_bft_tflite().benchmark(ctx.tflite_path, names=["a", "b"]), ValueError, ("names", "['a', 'b']")),
]

# ------------------------------------------------------------------ command line (`keras-bft ...`)

CLI_CASES = [
    Case("convert-missing-model", ["convert", "{out}/missing.keras", "-o", "{out}/m.tflite"], CLI, ("missing.keras",)),
    Case("convert-output-empty", ["convert", "{model}", "-o", ""], CLI, ("-o/--output", "''")),
    Case("convert-output-is-a-folder", ["convert", "{model}", "-o", "{out}"], CLI, ("-o/--output", "folder")),
    Case("convert-output-folder-missing", ["convert", "{model}", "-o", "{out}/missing/m.tflite"], CLI, ("-o/--output", "missing", "does not exist")),
    Case("convert-output-is-the-model", ["convert", "{model}", "-o", "{model}", "--force"], CLI, ("-o/--output", "m.keras")),
    Case("convert-samples-zero", ["convert", "{model}", "-o", "{out}/m.tflite", "--samples", "0"], CLI, ("--samples", "'0'")),
    Case("convert-input-shape-text", ["convert", "{model}", "-o", "{out}/m.tflite", "--input-shape", "abc"], CLI, ("--input-shape", "'abc'")),
    Case("convert-input-shape-conflicts", ["convert", "{model}", "-o", "{out}/m.tflite", "--input-shape", "7,7,16"], CLI, ("--input-shape", "(7, 7, 16)")),
    Case("convert-preprocess-unknown", ["convert", "{model}", "-o", "{out}/m.tflite", "--preprocess", "scale:x"], CLI, ("--preprocess", "'scale:x'")),
    Case("convert-int8-without-calibration", ["convert", "{model}", "-o", "{out}/m.tflite", "--quantize", "int8"], CLI, ("--calibration", "--quantize int8")),
    Case("convert-calibration-missing", ["convert", "{model}", "-o", "{out}/m.tflite", "--quantize", "int8", "--calibration", "{out}/missing"],
         CLI, ("--calibration", "missing")),
    Case("convert-calibration-not-data", ["convert", "{model}", "-o", "{out}/m.tflite", "--quantize", "int8", "--calibration", "{tflite}"],
         CLI, ("--calibration", "m.tflite")),
    Case("convert-calibration-without-int8", ["convert", "{model}", "-o", "{out}/m.tflite", "--calibration", "{calib}"], CLI, ("--calibration", "calib.npy", "--quantize")),
    Case("convert-io-type-without-int8", ["convert", "{model}", "-o", "{out}/m.tflite", "--io-type", "int8"], CLI, ("--io-type int8", "--quantize float32")),
    Case("convert-preprocess-overflows-to-inf", ["convert", "{model}", "-o", "{out}/m.tflite", "--quantize", "int8", "--calibration", "{calib}", "--samples", "2", "--input-shape", "6,6,16", "--preprocess", "scale:1e39,0"],
         CLI, ("--calibration", "calib.npy", "non-finite")),
    Case("benchmark-threads-zero", ["benchmark", "{tflite}", "--threads", "0"], CLI, ("--threads", "'0'")),
    Case("benchmark-threads-text", ["benchmark", "{tflite}", "--threads", "1,two"], CLI, ("--threads", "'1,two'")),
    Case("benchmark-runs-zero", ["benchmark", "{tflite}", "--runs", "0"], CLI, ("--runs", "'0'")),
    Case("benchmark-warmup-negative", ["benchmark", "{tflite}", "--warmup", "-1"], CLI, ("--warmup", "'-1'")),
    Case("benchmark-rounds-text", ["benchmark", "{tflite}", "--rounds", "many"], CLI, ("--rounds", "'many'")),
    Case("benchmark-not-a-tflite-file", ["benchmark", "{calib}"], CLI, ("calib.npy", "TFL3")),
    Case("benchmark-keras-file", ["benchmark", "{tflite}", "{model}"], CLI, ("m.keras", "TFL3")),
    Case("benchmark-missing-file", ["benchmark", "{out}/missing.tflite"], CLI, ("missing.tflite",)),
    Case("benchmark-json-and-markdown-same-file", ["benchmark", "{tflite}", "--json", "{out}/r.txt", "--markdown", "{out}/r.txt"],
         CLI, ("--json", "--markdown", "r.txt")),
    Case("benchmark-json-is-a-folder", ["benchmark", "{tflite}", "--json", "{out}"], CLI, ("--json", "folder")),
    Case("benchmark-markdown-empty", ["benchmark", "{tflite}", "--markdown", ""], CLI, ("--markdown", "''")),
    Case("benchmark-markdown-folder-missing", ["benchmark", "{tflite}", "--markdown", "{out}/missing/r.md"], CLI, ("--markdown", "missing")),
    Case("benchmark-json-is-a-model", ["benchmark", "{tflite}", "--json", "{tflite}", "--force"], CLI, ("--json", "m.tflite")),
]

# ------------------------------------------------------------------ demo data (keras_bft.demo.data, `keras-bft demo`)


def _demo_folder(root, name):
    """Builds the bad demo-data folder `name` under `root` (once) and returns its path."""
    path = os.path.join(root, "demo_data", name)
    if os.path.isdir(path):
        return path
    image = np.full((8, 8, 1), 128, np.uint8)
    layouts = {
        "bad-gz": {},
        "one-per-class": {"a": 1, "b": 1},
        "single-class": {"a": 5},
        "corrupt": {"a": 5, "b": 5},
        "foreign": {},
    }
    os.makedirs(path)
    for label, count in layouts[name].items():
        os.makedirs(os.path.join(path, label))
        for i in range(count):
            keras.utils.save_img(os.path.join(path, label, f"{i}.png"), image, scale=False)
    if name == "bad-gz":
        for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                     "t10k-labels-idx1-ubyte"):
            with open(os.path.join(path, stem + ".gz"), "w") as f:
                f.write("plain text, not gzip")
    if name == "corrupt":
        with open(os.path.join(path, "a", "bad.png"), "wb") as f:
            f.write(b"not an image")
    if name == "foreign":
        with open(os.path.join(path, "notes.txt"), "w") as f:
            f.write("the user's")
    return path


class DemoFolder(str):
    """A command-line argument naming a bad demo-data folder, built beside the module's fixtures.

    Built on first use outside the case's output folder (which must stay
    unchanged), through the `format` the harness calls on every argument.
    """

    def format(self, **paths):
        return _demo_folder(os.path.dirname(paths["model"]), str(self))


def _load(ctx, name, **kwargs):
    from keras_bft.demo import data

    return data.load_data(_demo_folder(os.path.dirname(ctx.model_path), name), verbose=False, **kwargs)


def _demo_data():
    from keras_bft.demo import data

    return data


_DEMO = ["demo", "--tiny", "--output-dir", "{out}/demo"]

DEMO_DATA_CASES = [
    Case("read_idx-gz-not-gzip",
         lambda ctx: _demo_data().read_idx(os.path.join(_demo_folder(os.path.dirname(ctx.model_path), "bad-gz"),
                                                        "train-images-idx3-ubyte.gz")),
         ValueError, ("not a valid gzip file", "train-images-idx3-ubyte.gz")),
    Case("load_data-gz-not-gzip", lambda ctx: _load(ctx, "bad-gz"), ValueError, ("gzip", "bad-gz")),
    Case("load_data-one-image-per-class", lambda ctx: _load(ctx, "one-per-class"), ValueError,
         ("at least 2 images", "{'a': 1, 'b': 1}", "one-per-class")),
    Case("load_data-single-class", lambda ctx: _load(ctx, "single-class"), ValueError,
         ("at least 2 class", "'a': 5", "single-class")),
    Case("load_data-corrupt-image", lambda ctx: _load(ctx, "corrupt"), ValueError, ("cannot be decoded", "bad.png")),
    Case("load_data-missing-folder", lambda ctx: _demo_data().load_data(ctx.out + "/missing", verbose=False),
         ValueError, ("data_dir", "missing")),
    Case("load_image_folder-test_fraction",
         lambda ctx: _demo_data().load_image_folder(_demo_folder(os.path.dirname(ctx.model_path), "corrupt"),
                                                    test_fraction=1.5),
         ValueError, ("test_fraction=1.5",)),
    Case("stratified_indices-per_class", lambda ctx: _demo_data().stratified_indices([0, 1], 0), ValueError,
         ("per_class=0",)),
    Case("prepare_images-shape", lambda ctx: _demo_data().prepare_images(np.zeros((2, 3))), ValueError,
         ("shape=(2, 3)",)),
    Case("cli-data-dir-gz-not-gzip", [*_DEMO, "--data-dir", DemoFolder("bad-gz")], CLI,
         ("--data-dir", "bad-gz", "not a valid gzip file")),
    Case("cli-data-dir-one-image-per-class", [*_DEMO, "--data-dir", DemoFolder("one-per-class")], CLI,
         ("--data-dir", "one-per-class", "{'a': 1, 'b': 1}")),
    Case("cli-data-dir-single-class", [*_DEMO, "--data-dir", DemoFolder("single-class")], CLI,
         ("--data-dir", "single-class", "at least 2 class")),
    Case("cli-data-dir-corrupt-image", [*_DEMO, "--data-dir", DemoFolder("corrupt")], CLI,
         ("--data-dir", "bad.png")),
    Case("cli-data-dir-missing", [*_DEMO, "--data-dir", "{out}/missing"], CLI, ("--data-dir", "missing")),
    Case("cli-output-dir-not-the-demos", ["demo", "--tiny", "--force", "--output-dir", DemoFolder("foreign")], CLI,
         ("--output-dir", "foreign", "did not write", "notes.txt")),
    Case("cli-output-dir-a-file", ["demo", "--tiny", "--output-dir", "{tflite}"], CLI, ("--output-dir", "m.tflite")),
    Case("cli-epochs-zero", [*_DEMO, "--epochs", "0"], CLI, ("--epochs", "0")),
    Case("cli-bft-widths-text", [*_DEMO, "--bft-widths", "abc"], CLI, ("--bft-widths", "'abc'")),
]


ALL_CASES = (
    LAYER_CASES
    + BUILDER_CASES
    + CONVERT_CASES
    + VERIFY_CASES
    + PREDICT_CASES
    + BENCHMARK_CASES
    + CLI_CASES
    + DEMO_DATA_CASES
)


def _listing(folder):
    return sorted(
        os.path.relpath(os.path.join(root, name), folder)
        for root, dirs, names in os.walk(folder)
        for name in names + dirs
    )


@pytest.mark.parametrize("case", ALL_CASES, ids=[case.id for case in ALL_CASES])
def test_bad_input(case, fixtures, tmp_path, capsys):
    ctx = Context(fixtures, tmp_path)
    before = _listing(tmp_path)
    if case.error == CLI:
        argv = [ctx.format(arg) for arg in case.call]
        try:
            status = keras_bft_cli.main(argv)
        except SystemExit as exit_:  # argparse's own usage errors
            status = exit_.code
        message = capsys.readouterr().err
        assert status == 2, f"exit status {status}; stderr: {message}"
    else:
        with pytest.raises(case.error) as info:
            case.call(ctx)
        message = str(info.value)
    for name in case.names:
        assert name in message, f"{name!r} not in the message: {message}"
    assert _listing(tmp_path) == before, "the failed call left files behind"
