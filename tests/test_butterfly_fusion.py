"""ButterflyFusion against its dense oracle. Backend-agnostic: also run under JAX (test_backends.py)."""

import os

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from keras import ops

from keras_bft import ButterflyFusion
from keras_bft.ops import LOWERINGS
from keras_bft.ops import oracle


def _inputs(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _channels_last(x, data_format):
    return np.moveaxis(x, 1, -1) if data_format == "channels_first" and x.ndim >= 3 else x


def _expected(layer, x):
    """x @ dense_kernel() (+ bias) on the channel axis, in float64."""
    xl = _channels_last(x, layer.data_format).astype(np.float64)
    y = xl @ layer.dense_kernel().astype(np.float64)
    if layer.use_bias:
        y = y + ops.convert_to_numpy(layer.bias)
    if layer.data_format == "channels_first" and x.ndim >= 3:
        y = np.moveaxis(y, -1, 1)
    return y


@settings(max_examples=40, deadline=None)
@given(
    cin=st.integers(1, 40),
    cout=st.integers(1, 40),
    k=st.integers(2, 8),
    rank=st.integers(2, 5),
    data_format=st.sampled_from(["channels_last", "channels_first"]),
    lowering=st.sampled_from(("auto",) + LOWERINGS),
    residual=st.booleans(),
    use_bias=st.booleans(),
    rectangular=st.sampled_from(["min", "paper"]),
)
def test_layer_equals_dense_oracle(cin, cout, k, rank, data_format, lowering, residual, use_bias, rectangular):
    spatial = (3, 2, 2)[: rank - 2]
    shape = (2, cin) + spatial if data_format == "channels_first" else (2,) + spatial + (cin,)
    layer = ButterflyFusion(
        cout,
        butterfly_k=k,
        residual=residual,
        use_bias=use_bias,
        bias_initializer="random_normal",
        data_format=data_format,
        lowering=lowering,
        rectangular=rectangular,
    )
    x = _inputs(shape, seed=cin * 41 + cout)
    y = ops.convert_to_numpy(layer(x))
    assert y.shape == layer.compute_output_shape(shape)
    np.testing.assert_allclose(y, _expected(layer, x), rtol=1e-4, atol=1e-4)


def test_parameter_count_follows_the_plan():
    layer = ButterflyFusion(576, butterfly_k=4, use_bias=True)
    layer.build((None, 7, 7, 96))
    expected = sum(s.groups * s.group_in * s.group_out for s in layer.plan.stages) + 576
    assert layer.count_params() == expected == 96 * (4 + 4 + 3) + 576 * 2 + 576
    assert layer.count_params() < 96 * 576 / 10


def test_square_transform_is_fully_connected():
    layer = ButterflyFusion(64, butterfly_k=4, residual=False)
    layer.build((None, 64))
    assert layer.plan.num_stages == 3
    assert np.all(layer.dense_kernel() != 0)


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize(
    "cin, cout, rectangular",
    [(24, 24, "min"), (12, 30, "min"), (30, 12, "min"), (12, 30, "paper"), (30, 12, "paper")],
)
def test_gradients_match_the_oracle(lowering, cin, cout, rectangular):
    layer = ButterflyFusion(cout, butterfly_k=3, lowering=lowering, residual=True, rectangular=rectangular)
    x = _inputs((4, cin), seed=1)
    g_y = _inputs((4, cout), seed=2)
    layer.build(x.shape)
    kernels = [ops.convert_to_numpy(k).astype(np.float64) for k in layer.kernels]

    # Input gradient of sum(y * g_y) is g_y @ D^T.
    grads = _gradients(layer, x, g_y)
    dense = layer.dense_kernel().astype(np.float64)
    np.testing.assert_allclose(grads[0], g_y @ dense.T, rtol=1e-4, atol=1e-4)

    # Kernel gradients against a central difference of the float64 NumPy oracle.
    rng = np.random.default_rng(3)
    for i, grad in enumerate(grads[1:]):
        direction = rng.standard_normal(kernels[i].shape)
        eps = 1e-4

        def loss(t):
            ks = [k + (t * direction if j == i else 0) for j, k in enumerate(kernels)]
            return np.sum((x @ oracle.dense_matrix(ks, layer.plan, True)) * g_y)

        numeric = (loss(eps) - loss(-eps)) / (2 * eps)
        np.testing.assert_allclose(np.sum(grad * direction), numeric, rtol=1e-3, atol=1e-3)


def _gradients(layer, x, g_y):
    """d sum(layer(x) * g_y) / d (x, kernels...) on the current backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(layer(xt) * g_y)
        grads = tape.gradient(loss, [xt] + [k.value for k in layer.kernels])
        return [np.asarray(g) for g in grads]
    import jax

    def loss_fn(x_, kernel_values):
        y, _ = layer.stateless_call(kernel_values, [], x_)
        return (y * g_y).sum()

    values = [k.value for k in layer.trainable_variables]
    gx, gk = jax.grad(loss_fn, argnums=(0, 1))(x, values)
    return [np.asarray(gx)] + [np.asarray(g) for g in gk]


def test_merge_stages_is_the_same_function():
    x = _inputs((2, 5, 5, 256))
    base = ButterflyFusion(256, butterfly_k=4)
    y = ops.convert_to_numpy(base(x))
    for segments in ([2, 2], [4], [1, 3]):
        merged = ButterflyFusion.from_config({**base.get_config(), "merge_stages": segments})
        merged.build(x.shape)
        merged.set_weights(base.get_weights())
        np.testing.assert_allclose(ops.convert_to_numpy(merged(x)), y, rtol=1e-4, atol=1e-4)


def test_dynamic_batch_and_spatial_sizes():
    inputs = keras.Input((None, None, 32))
    model = keras.Model(inputs, ButterflyFusion(48, butterfly_k=4)(inputs))
    layer = model.layers[-1]
    for shape in [(1, 3, 5, 32), (3, 7, 2, 32)]:
        x = _inputs(shape)
        np.testing.assert_allclose(
            model.predict(x, verbose=0), _expected(layer, x), rtol=1e-4, atol=1e-4
        )


def test_drop_in_for_dense_in_sequential():
    model = keras.Sequential([keras.Input((20,)), ButterflyFusion(10, use_bias=True, activation="relu")])
    x = _inputs((8, 20))
    layer = model.layers[-1]
    np.testing.assert_allclose(
        model.predict(x, verbose=0), np.maximum(_expected(layer, x), 0), rtol=1e-4, atol=1e-4
    )


def _small_model(cin=16, cout=24):
    inputs = keras.Input((4, 4, cin))
    x = ButterflyFusion(cout, butterfly_k=4, use_bias=True)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def test_save_and_load_safe_mode(tmp_path):
    model = _small_model()
    model.compile("adam", "mse")
    x, y = _inputs((8, 4, 4, 16)), _inputs((8, 3), seed=5)
    model.fit(x, y, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "bft.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert loaded.layers[1].get_config() == model.layers[1].get_config()


def test_config_round_trip_keeps_every_argument():
    layer = ButterflyFusion(
        12,
        radices=[2, 4],
        residual=False,
        use_bias=True,
        activation="relu6",
        data_format="channels_first",
        lowering="shuffle",
        kernel_initializer="he_normal",
        kernel_regularizer="l2",
        bias_constraint="non_neg",
        rectangular="paper",
        name="bft",
    )
    clone = ButterflyFusion.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize("k", [4, 16])
def test_training_under_xla_matches_eager_and_reduces_loss(k):
    x, y = _inputs((16, 4, 4, 16)), _inputs((16, 3), seed=7)
    losses = {}
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        model = _small_model()
        model.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=jit)
        history = model.fit(x, y, epochs=4, batch_size=16, verbose=0, shuffle=False)
        losses[jit] = history.history["loss"]
    assert losses[True][-1] < losses[True][0]
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-3)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    x = _inputs((4, 6, 6, 32))
    reference = ButterflyFusion(64, butterfly_k=8)
    y32 = ops.convert_to_numpy(reference(x))
    layer = ButterflyFusion(64, butterfly_k=8, dtype=policy)
    layer.build(x.shape)
    layer.set_weights(reference.get_weights())
    y = layer(x)
    assert keras.backend.standardize_dtype(y.dtype) == policy.split("_")[1]
    assert keras.backend.standardize_dtype(layer.kernels[0].dtype) == "float32"
    tol = 0.05 if policy == "mixed_bfloat16" else 0.01
    np.testing.assert_allclose(ops.convert_to_numpy(ops.cast(y, "float32")), y32, atol=tol * np.abs(y32).max())
    # And it trains: one fit step under the policy.
    inputs = keras.Input((6, 6, 32))
    model = keras.Model(inputs, ButterflyFusion(8, dtype=policy)(inputs))
    model.compile("sgd", "mse", jit_compile=True)
    model.fit(x, _inputs((4, 6, 6, 8)), epochs=1, verbose=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"filters": 0}, "filters=0"),
        ({"filters": -3}, "filters=-3"),
        ({"filters": 2.5}, "filters=2.5"),
        ({"filters": 8, "butterfly_k": 1}, "butterfly_k=1"),
        ({"filters": 8, "radices": [3, 3]}, r"radices=\[3, 3\]"),
        ({"filters": 8, "radices": [0]}, r"radices=\[0\]"),
        ({"filters": 8, "num_stages": 0}, "num_stages=0"),
        ({"filters": 8, "radices": [2, 4], "num_stages": 2}, "not both"),
        ({"filters": 8, "data_format": "NHWC"}, "data_format='NHWC'"),
        ({"filters": 8, "lowering": "fft"}, "lowering='fft'"),
        ({"filters": 8, "merge_stages": [5]}, r"merge_stages=\[5\] \(sum 5\)"),
        ({"filters": 8, "merge_stages": (1.9, 2.2)}, r"merge_stages=\(1.9, 2.2\)"),
        ({"filters": 8, "radices": "24"}, r"radices='24'"),
        ({"filters": 8, "radices": [2.5, 4]}, r"radices=\[2.5, 4\]"),
        ({"filters": 8, "radices": 8}, r"radices=\[8\] for one stage.*Received: radices=8"),
        ({"filters": 8, "num_stages": 8}, r"at most 4 stages for 8.*num_stages=8"),
        ({"filters": 8, "num_stages": 30}, r"num_stages=30"),
        ({"filters": 8, "num_stages": 2.0}, r"num_stages=2.0"),
        ({"filters": 8, "rectangular": "max"}, "rectangular='max'"),
    ],
)
def test_bad_arguments_raise_value_error_echoing_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        layer = ButterflyFusion(**kwargs)
        layer.build((None, 8))


def test_numpy_integer_arguments_are_accepted_like_filters():
    layer = ButterflyFusion(np.int64(8), num_stages=np.int64(2), merge_stages=np.array([2]))
    layer.build((None, 8))
    assert layer.plan.num_stages == 2
    config = layer.get_config()
    assert type(config["num_stages"]) is int and config["merge_stages"] == [2]
    assert ButterflyFusion(8, radices=np.array([2, 4])).get_config()["radices"] == [2, 4]


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool"])
def test_integer_inputs_compute_like_dense(dtype):
    x = np.random.default_rng(3).integers(0, 5, (4, 3, 8)).astype(dtype)
    layer = ButterflyFusion(12, radices=[2, 4], bias_initializer="random_normal", use_bias=True)
    y = layer(x)
    # Dense casts integer inputs to its compute dtype; so does the layer.
    assert keras.backend.standardize_dtype(y.dtype) == keras.backend.standardize_dtype(
        keras.layers.Dense(12)(x).dtype
    ) == "float32"
    np.testing.assert_allclose(ops.convert_to_numpy(y), _expected(layer, x.astype(np.float64)), atol=1e-4)


def test_integer_inputs_under_mixed_precision_compute_in_the_policy_dtype():
    x = np.arange(32, dtype="int32").reshape(4, 8) % 3
    y = ButterflyFusion(8, dtype="mixed_float16")(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert keras.backend.standardize_dtype(keras.layers.Dense(8, dtype="mixed_float16")(x).dtype) == "float16"


def test_unknown_channel_dimension():
    with pytest.raises(ValueError, match=r"must be known.*\(None, 4, None\)"):
        ButterflyFusion(8).build((None, 4, None))


def test_rank_below_two():
    with pytest.raises(ValueError, match=r"min_ndim=2.*\(8,\)"):
        ButterflyFusion(8)(np.zeros((8,), "float32"))


def test_dense_kernel_before_build():
    with pytest.raises(ValueError, match="not built"):
        ButterflyFusion(8).dense_kernel()


def test_docstring_example_runs():
    import doctest

    from keras_bft.layers import butterfly_fusion

    result = doctest.testmod(butterfly_fusion, extraglobs={"np": np}, verbose=False)
    assert result.attempted >= 4 and result.failed == 0


def test_first_call_of_a_subclassed_model_builds_in_a_fresh_process():
    # Keras' global SeedGenerator, created inside a subclassed model's first (symbolic) call, has no state:
    # the default initializer must not depend on it. A fresh process has no global generator yet.
    import subprocess
    import sys

    script = (
        "import numpy as np, keras\n"
        "from keras_bft import ButterflyFusion\n"
        "class Net(keras.Model):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fuse = ButterflyFusion(32)\n"
        "    def call(self, x):\n"
        "        return self.fuse(x)\n"
        "print(tuple(Net()(np.ones((2, 6, 6, 32), 'float32')).shape))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("(2, 6, 6, 32)")


def test_default_initializer_is_reproducible_and_differs_per_stage():
    def kernels(seed):
        keras.utils.set_random_seed(seed)
        layer = ButterflyFusion(16, radices=[4, 4])
        layer.build((None, 16))
        return [np.asarray(k) for k in layer.kernels]

    a, b, c = kernels(3), kernels(3), kernels(4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], a[1])  # same shape, independent draws
    assert not np.array_equal(a[0], c[0])
