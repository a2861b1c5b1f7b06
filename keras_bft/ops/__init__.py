"""Butterfly math with no Keras layers in it: plans, the NumPy oracle, keras.ops lowerings, the fit to a dense matrix."""

from keras_bft.ops import activations
from keras_bft.ops.lowering import LOWERINGS
from keras_bft.ops.lowering import butterfly_transform
from keras_bft.ops.lowering import default_lowering
from keras_bft.ops.lowering import dense_from_kernels
from keras_bft.ops.lowering import grouped_conv_stages
from keras_bft.ops.lowering import merge_kernels
from keras_bft.ops.oracle import dense_matrix
from keras_bft.ops.plans import ButterflyPlan
from keras_bft.ops.plans import Stage
from keras_bft.ops.plans import auto_radices
from keras_bft.ops.plans import make_plan
