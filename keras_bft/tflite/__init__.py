"""Export to LiteRT (.tflite): convert with builtin ops only, verify against Keras, benchmark."""

from keras_bft.tflite.benchmark import benchmark
from keras_bft.tflite.convert import QUANTIZATIONS
from keras_bft.tflite.convert import convert
from keras_bft.tflite.graph import op_histogram
from keras_bft.tflite.lowering_report import LoweringReport
from keras_bft.tflite.rewrite import plan_lowering
from keras_bft.tflite.rewrite import prepare_for_export
from keras_bft.tflite.search import OBJECTIVES
from keras_bft.tflite.search import choose_lowering
from keras_bft.tflite.verify import fully_delegated
from keras_bft.tflite.verify import predict
from keras_bft.tflite.verify import verify
from keras_bft.tflite.benchmark import to_markdown as benchmark_markdown
