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

LAYER_CASES = [
    Case("filters-zero", lambda ctx: ButterflyFusion(0), ValueError, ("filters", "0")),
    Case("butterfly_k-one", lambda ctx: ButterflyFusion(8, butterfly_k=1), ValueError, ("butterfly_k", "1")),
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

DEMO_DATA_CASES = []


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
