"""Writes int8 .tflite files of two benchmark models with whatever keras_bft is on the path.

Run it with an older checkout on PYTHONPATH to get that version's files, then time them next to the current
exporter's with `benchmarks/export.py --extra NAME=PATH` (docs/benchmarks-tflite.md, "Not slower"):

    PYTHONPATH=/path/to/old/checkout python benchmarks/reference_files.py OUTPUT_FOLDER
"""

import sys

import keras
import numpy as np

from keras_bft import ButterflyFusion
from keras_bft import applications as apps
from keras_bft import tflite
from keras_bft.tflite import synthetic


def layer_bft():
    x = keras.Input((14, 14, 1024), batch_size=1)
    return keras.Model(x, ButterflyFusion(1024, butterfly_k=32)(x), name="bft_k32_1024")


models = {
    "layer_bft_k32": layer_bft(),
    "v1_bft": apps.MobileNetV1BFT((224, 224, 3), fusion="butterfly", butterfly_k=4),
}
for name, model in models.items():
    synthetic.randomize_batchnorm(model)
    data = np.random.default_rng(0).uniform(-1, 1, (8, *model.input_shape[1:])).astype("float32")
    out = tflite.convert(model, "int8", representative_data=data)
    blob = out if isinstance(out, bytes) else out.tflite_bytes  # older versions returned bytes
    with open(f"{sys.argv[1]}/{name}.tflite", "wb") as f:
        f.write(blob)
    print(name, len(blob))
