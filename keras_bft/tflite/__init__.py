"""Export to LiteRT (.tflite): convert with builtin ops only, verify against Keras, benchmark.

TensorFlow and Keras load when a function first needs them (the command line's
`--help` stays instant); `plan_lowering` and `prepare_for_export`, which
define Keras layers, load on first access.
"""

from keras_bft.tflite.benchmark import benchmark
from keras_bft.tflite.benchmark import to_markdown as benchmark_markdown
from keras_bft.tflite.convert import QUANTIZATIONS
from keras_bft.tflite.convert import ConversionResult
from keras_bft.tflite.convert import convert
from keras_bft.tflite.graph import op_histogram
from keras_bft.tflite.lowering_report import LoweringReport
from keras_bft.tflite.search import OBJECTIVES
from keras_bft.tflite.search import choose_lowering
from keras_bft.tflite.verify import fully_delegated
from keras_bft.tflite.verify import predict
from keras_bft.tflite.verify import verify

_FROM_REWRITE = ("plan_lowering", "prepare_for_export")


def __getattr__(name):
    if name in _FROM_REWRITE:
        from keras_bft.tflite import rewrite

        return getattr(rewrite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
