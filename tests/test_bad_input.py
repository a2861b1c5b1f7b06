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

BUILDER_CASES = []

# ------------------------------------------------------------------ convert (keras_bft.tflite.convert)

CONVERT_CASES = []

# ------------------------------------------------------------------ verify / predict

VERIFY_CASES = []

PREDICT_CASES = []

# ------------------------------------------------------------------ benchmark (keras_bft.tflite.benchmark)

BENCHMARK_CASES = []

# ------------------------------------------------------------------ command line (`keras-bft ...`)

CLI_CASES = [
    Case("convert-missing-model", ["convert", "{out}/missing.keras", "-o", "{out}/m.tflite"], CLI, ("missing.keras",)),
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
