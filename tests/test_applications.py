"""The BFT applications: parity with keras.applications, the ShuffleNetV2 table, training, saving."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_bft import ButterflyFusion
from keras_bft import applications
from keras_bft.applications import ChannelShuffle
from keras_bft.applications import ChannelSplit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A small configuration of every family, for the tests that run the model.
SMALL = {
    "v1": (applications.MobileNetV1BFT, dict(width=0.25)),
    "v2": (applications.MobileNetV2BFT, dict(width=0.35)),
    "v3_small": (applications.MobileNetV3SmallBFT, dict(width=0.75)),
    "v3_large": (applications.MobileNetV3LargeBFT, dict(width=0.75)),
    "shufflenet_v2": (applications.ShuffleNetV2BFT, dict(width=0.5)),
}


def small_model(family, fusion="butterfly", size=32, **kwargs):
    builder, defaults = SMALL[family]
    return builder(input_shape=(size, size, 3), classes=10, fusion=fusion, **{**defaults, **kwargs})


def random_batch(size=32, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, size=(batch,))
    return x, y


def weight_shapes(model):
    return {
        layer.name: [tuple(w.shape) for w in layer.weights]
        for layer in model.layers
        if layer.weights
    }


# ---------------------------------------------------------------- parity with keras.applications

PARITY = [
    (applications.MobileNetV1BFT, keras.applications.MobileNet, w) for w in (0.25, 0.5, 1.0)
] + [
    (applications.MobileNetV2BFT, keras.applications.MobileNetV2, w) for w in (0.35, 1.0, 1.4)
] + [
    (applications.MobileNetV3SmallBFT, keras.applications.MobileNetV3Small, w) for w in (0.75, 1.0)
] + [
    (applications.MobileNetV3LargeBFT, keras.applications.MobileNetV3Large, w) for w in (0.75, 1.0)
]


@pytest.mark.parametrize("builder, reference, width", PARITY)
def test_pointwise_twin_is_keras_applications(builder, reference, width):
    ours = builder(input_shape=(224, 224, 3), width=width, fusion="pointwise")
    keras_model = reference(input_shape=(224, 224, 3), alpha=width, weights=None)
    assert ours.count_params() == keras_model.count_params()
    assert ours.output_shape == keras_model.output_shape
    # Layer for layer: every layer with weights has the same name and weight shapes.
    assert weight_shapes(ours) == weight_shapes(keras_model)


@pytest.mark.parametrize(
    "builder, reference, kwargs",
    [
        (applications.MobileNetV1BFT, keras.applications.MobileNet, dict(depth_multiplier=2, pooling=None)),
        (applications.MobileNetV2BFT, keras.applications.MobileNetV2, dict(pooling="max")),
        (applications.MobileNetV3SmallBFT, keras.applications.MobileNetV3Small, dict(minimalistic=True, pooling="avg")),
        (
            applications.MobileNetV3LargeBFT,
            keras.applications.MobileNetV3Large,
            dict(include_preprocessing=False, pooling=None),
        ),
    ],
)
def test_pointwise_twin_without_top(builder, reference, kwargs):
    ours = builder(input_shape=(96, 128, 3), include_top=False, fusion="pointwise", **kwargs)
    keras_model = reference(input_shape=(96, 128, 3), include_top=False, weights=None, **kwargs)
    assert ours.count_params() == keras_model.count_params()
    assert ours.output_shape == keras_model.output_shape
    assert weight_shapes(ours) == weight_shapes(keras_model)


# The dense 1x1 convs the butterfly twins keep (docs/applications.md).
def _kept_dense(name):
    return "squeeze_excite_conv" in name or name in ("conv_preds", "conv_2", "logits")


@pytest.mark.parametrize("family", sorted(SMALL))
def test_every_body_1x1_becomes_a_butterfly(family):
    pointwise = small_model(family, "pointwise")
    butterfly = small_model(family, "butterfly")
    one_by_one = {
        layer.name
        for layer in pointwise.layers
        if isinstance(layer, keras.layers.Conv2D)
        and not isinstance(layer, keras.layers.DepthwiseConv2D)
        and tuple(layer.kernel_size) == (1, 1)
        and not _kept_dense(layer.name)
    }
    fused = {layer.name for layer in butterfly.layers if isinstance(layer, ButterflyFusion)}
    assert fused == one_by_one and fused
    # The rest of the network is unchanged, BN after each butterfly included.
    rest = {k: v for k, v in weight_shapes(pointwise).items() if k not in fused}
    assert rest == {k: v for k, v in weight_shapes(butterfly).items() if k not in fused}
    assert sum(isinstance(layer, ButterflyFusion) for layer in butterfly.layers) == len(fused)


def test_fuse_head_false_keeps_the_head_dense():
    model = applications.MobileNetV2BFT(input_shape=(64, 64, 3), width=0.35, classes=10, fuse_head=False)
    assert isinstance(model.get_layer("Conv_1"), keras.layers.Conv2D)
    assert isinstance(model.get_layer("block_16_project"), ButterflyFusion)


@pytest.mark.parametrize(
    "width, params",
    # ShuffleNetV2 paper: 1.4M / 2.3M / 3.5M / 7.4M parameters.
    [(0.5, 1.4), (1.0, 2.3), (1.5, 3.5), (2.0, 7.4)],
)
def test_shufflenet_v2_matches_the_paper_table(width, params):
    model = applications.ShuffleNetV2BFT(width=width, fusion="pointwise")
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert round(trainable / 1e6, 1) == params
    assert round(model.count_params() / 1e6, 1) == params  # with BN statistics too
    assert model.output_shape == (None, 1000)
    assert model.get_layer("conv5").output.shape[1:3] == (7, 7)


def test_shuffle_layers():
    x = np.arange(2 * 6, dtype="float32").reshape(1, 2, 1, 6)
    left, right = ChannelSplit()(x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(left), x[..., :3])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(right), x[..., 3:])
    shuffled = keras.ops.convert_to_numpy(ChannelShuffle(groups=3)(x))
    # Channel g * 2 + j goes to j * 3 + g.
    np.testing.assert_array_equal(shuffled, x[..., [0, 2, 4, 1, 3, 5]])
    first = ChannelSplit(data_format="channels_first")(np.moveaxis(x, -1, 1))[0]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(first), np.moveaxis(x, -1, 1)[:, :3])
    with pytest.raises(ValueError, match="groups=4"):
        ChannelShuffle(groups=4)(x)


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weights="imagenet"), "weights='imagenet'"),
        (dict(weights="/no/such/file.weights.h5"), "/no/such/file.weights.h5"),
        (dict(fusion="dense"), "fusion='dense'"),
        (dict(width=-1.0), "width=-1.0"),
        (dict(width=0.5, alpha=0.75), "alpha=0.75"),
        (dict(pooling="mean", include_top=False), "pooling='mean'"),
        (dict(classes=0), "classes=0"),
        (dict(butterfly_k=1), "butterfly_k=1"),
        (dict(num_stages=0), "num_stages=0"),
        (dict(radices=[4, 4]), r"radices=\[4, 4\]"),
        (dict(radices={16: [4, 3]}), "radices="),
        (dict(input_shape=(16, 16, 3)), r"input_shape=\(16, 16, 3\)"),
        (dict(dropout=1.5), "dropout=1.5"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    kwargs = {"input_shape": (32, 32, 3), **kwargs}
    with pytest.raises(ValueError, match=match):
        applications.MobileNetV1BFT(**kwargs)


def test_family_arguments_raise():
    with pytest.raises(ValueError, match="minimalistic='yes'"):
        applications.MobileNetV3SmallBFT(minimalistic="yes")
    with pytest.raises(ValueError, match="depth_multiplier=0"):
        applications.MobileNetV1BFT(depth_multiplier=0)
    with pytest.raises(ValueError, match="fuse_head=1"):
        applications.ShuffleNetV2BFT(fuse_head=1)


def test_alpha_and_radices_dict():
    a = applications.MobileNetV1BFT(input_shape=(32, 32, 3), alpha=0.25, classes=10)
    b = applications.MobileNetV1BFT(input_shape=(32, 32, 3), width=0.25, classes=10)
    assert a.count_params() == b.count_params()
    # 256 channels (width 1.0 blocks 4-5) get [16, 16]; the others keep k=4.
    model = applications.MobileNetV1BFT(input_shape=(32, 32, 3), classes=10, radices={256: [16, 16]})
    assert model.get_layer("conv_pw_5").plan.radices == (16, 16)
    assert model.get_layer("conv_pw_13").plan.radices == (4, 4, 4, 4, 4)
    one_width = applications.MobileNetV1BFT(input_shape=(32, 32, 3), classes=10, num_stages=2)
    assert all(layer.plan.num_stages == 2 for layer in one_width.layers if isinstance(layer, ButterflyFusion))


def test_input_tensor_and_weights_file(tmp_path):
    inputs = keras.Input((32, 32, 1))
    model = applications.ShuffleNetV2BFT(input_tensor=inputs, width=0.5, classes=3)
    assert model.input_shape == (None, 32, 32, 1)
    path = str(tmp_path / "w.weights.h5")
    model.save_weights(path)
    again = applications.ShuffleNetV2BFT(input_shape=(32, 32, 1), width=0.5, classes=3, weights=path)
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- numerics, training, saving


@pytest.mark.parametrize("family", sorted(SMALL))
def test_butterflies_equal_their_dense_oracle_inside_the_model(family):
    model = small_model(family)
    fused = [layer for layer in model.layers if isinstance(layer, ButterflyFusion)]
    probe = keras.Model(model.input, [layer.input for layer in fused])
    x, _ = random_batch(batch=2)
    for layer, layer_input in zip(fused, probe(x, training=False)):
        layer_input = keras.ops.convert_to_numpy(layer_input)
        got = keras.ops.convert_to_numpy(layer(layer_input))
        want = layer_input @ layer.dense_kernel()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=layer.name)


def _fit_losses(model, mode, epochs=5):
    x, y = random_batch()
    optimizer = keras.optimizers.Adam(1e-3)
    if mode == "mixed_float16":
        # Dynamic loss scaling starts at 2**15 and skips steps while it halves;
        # start lower so a few steps suffice.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0**8)
    model.compile(
        optimizer=optimizer,
        loss="sparse_categorical_crossentropy",
        jit_compile=mode == "jit",
        # Tracing a MobileNet train step costs 15-60 s on two shared cores; a
        # few eager steps cost less. The XLA mode covers the compiled path.
        run_eagerly=mode != "jit",
    )
    return model.fit(x, y, batch_size=8, epochs=epochs, verbose=0).history["loss"]


# Each family trains in each mode, the fusions alternating across families and
# modes. KERAS_BFT_FULL_TESTS=1 runs every builder x fusion x mode (XLA compiles
# of all five builders take several minutes on two cores).
_FAMILIES = ("v1", "v2", "v3_small", "shufflenet_v2", "v3_large")
_FUSIONS = ("butterfly", "pointwise")
if os.environ.get("KERAS_BFT_FULL_TESTS"):
    TRAIN_CASES = [(f, fu, m) for f in _FAMILIES for fu in _FUSIONS for m in ("eager", "mixed_float16", "jit")]
else:
    TRAIN_CASES = [(f, _FUSIONS[i % 2], "eager") for i, f in enumerate(_FAMILIES)]
    TRAIN_CASES += [(f, _FUSIONS[(i + 1) % 2], "mixed_float16") for i, f in enumerate(_FAMILIES)]
    TRAIN_CASES += [("v1", "butterfly", "jit")]


@pytest.mark.parametrize("family, fusion, mode", TRAIN_CASES)
def test_training_reduces_the_loss(family, fusion, mode):
    keras.utils.set_random_seed(0)  # same init and dropout masks on every run
    policy = keras.config.dtype_policy()
    try:
        if mode == "mixed_float16":
            keras.config.set_dtype_policy("mixed_float16")
        model = small_model(family, fusion)
        losses = _fit_losses(model, mode)
    finally:
        keras.config.set_dtype_policy(policy)
    if mode == "mixed_float16":
        fused = [layer for layer in model.layers if isinstance(layer, (ButterflyFusion, keras.layers.Conv2D))]
        assert all(layer.compute_dtype == "float16" for layer in fused)
        assert all(w.dtype == "float32" for w in model.trainable_weights)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("family", sorted(SMALL))
def test_save_and_load_reproduce_outputs(family, tmp_path):
    model = small_model(family)
    rng = np.random.default_rng(1)
    # Move every weight off its initial value (BN statistics included, variances > 0).
    model.set_weights([w + 0.1 * np.abs(rng.normal(size=w.shape)).astype(w.dtype) for w in model.get_weights()])
    x, _ = random_batch(seed=2)
    path = str(tmp_path / f"{family}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    got = keras.ops.convert_to_numpy(loaded(x, training=False))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_deep_butterfly_network_stays_finite():
    keras.utils.set_random_seed(0)
    # 13 butterflies of up to 5 stages each: 60+ stage products in a row.
    model = applications.MobileNetV1BFT(input_shape=(32, 32, 3), width=1.0, classes=10)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(800, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=(800,))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 100 steps
    assert np.isfinite(history.history["loss"][-1])
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(model(x[:8], training=False))))


_MIRRORED = textwrap.dedent(
    """
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    import keras
    from keras_bft.applications import MobileNetV1BFT

    def build():
        model = MobileNetV1BFT(input_shape=(32, 32, 3), width=0.25, classes=10, dropout=0.0)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True  # global-batch statistics across replicas
        # Eager steps: tracing the train step would cost more than the steps.
        model.compile(
            optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy", run_eagerly=True
        )
        return model

    rng = np.random.default_rng(0)
    # One global batch and one step. (After a second step the weights of both
    # twins, pointwise included, drift ~2% apart between MirroredStrategy and one
    # device, with the losses still equal to 3e-5: a Keras/TF effect, not BFT's.)
    x = rng.uniform(-1, 1, size=(8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=(8,))
    keras.utils.set_random_seed(0)
    single = build()
    init = single.get_weights()
    single.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        mirrored = build()
    mirrored.set_weights(init)
    mirrored.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)

    moved = max(np.abs(a - b).max() for a, b in zip(single.get_weights(), init))
    diff = max(np.abs(a - b).max() for a, b in zip(single.get_weights(), mirrored.get_weights()))
    print("MOVED", moved, "DIFF", diff)
    """
)


def test_mirrored_strategy_matches_single_device():
    env = {**os.environ, "PYTHONPATH": ROOT, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-c", _MIRRORED], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("MOVED")][-1]
    moved, diff = float(line.split()[1]), float(line.split()[3])
    assert moved > 1e-2  # the SGD step really changed the weights
    assert diff < 1e-3 * moved, line  # float32 reduction order only


# ---------------------------------------------------------------- keras.applications parity (issue 12)

OPEN_SIZE = [
    (applications.MobileNetV1BFT, keras.applications.MobileNet),
    (applications.MobileNetV2BFT, keras.applications.MobileNetV2),
    (applications.ShuffleNetV2BFT, None),
    (applications.MobileNetV3SmallBFT, keras.applications.MobileNetV3Small),
]


@pytest.mark.parametrize("builder, reference", OPEN_SIZE)
def test_no_input_shape_without_top_leaves_the_size_open(builder, reference):
    ours = builder(include_top=False, width=0.5 if builder is not applications.MobileNetV1BFT else 0.25)
    assert ours.input_shape == (None, None, None, 3)
    if reference is not None:
        alpha = 0.25 if reference is keras.applications.MobileNet else 0.5 if reference is keras.applications.MobileNetV2 else 0.75
        assert reference(include_top=False, weights=None, alpha=alpha).input_shape == ours.input_shape
    # With the classifier the default stays 224x224 (MobileNetV3: open, as in keras.applications).
    if builder is not applications.MobileNetV3SmallBFT:
        assert builder(width=0.5, fusion="pointwise").input_shape == (None, 224, 224, 3)


def test_mobilenet_v3_dropout_rate_as_in_keras_applications():
    ours = applications.MobileNetV3SmallBFT(input_shape=(64, 64, 3), dropout_rate=0.35, fusion="pointwise")
    keras_model = keras.applications.MobileNetV3Small(input_shape=(64, 64, 3), dropout_rate=0.35, weights=None)
    rates = lambda model: [l.rate for l in model.layers if isinstance(l, keras.layers.Dropout)]  # noqa: E731
    assert rates(ours) == rates(keras_model) == [0.35]
    assert rates(applications.MobileNetV3LargeBFT(input_shape=(64, 64, 3), dropout=0.35, dropout_rate=0.35)) == [0.35]
    assert rates(applications.MobileNetV3LargeBFT(input_shape=(64, 64, 3))) == [0.2]


@pytest.mark.parametrize(
    "kwargs, ok",
    [
        (dict(width=1.0, alpha=0.5), False),  # used to slip through: width=1.0 is the default
        (dict(width=0.5, alpha=0.5), True),
        (dict(alpha=0.5), True),
        (dict(width=0.5), True),
    ],
)
def test_width_and_alpha(kwargs, ok):
    if not ok:
        with pytest.raises(ValueError, match="alpha=0.5"):
            applications.MobileNetV2BFT(input_shape=(32, 32, 3), **kwargs)
        return
    model = applications.MobileNetV2BFT(input_shape=(32, 32, 3), classes=10, **kwargs)
    assert model.get_layer("Conv1").filters == 16  # make_divisible(32 * 0.5)


def test_preprocess_input_and_decode_predictions_per_family():
    from keras_bft.applications import mobilenet_v1, mobilenet_v2, mobilenet_v3, shufflenet_v2

    assert mobilenet_v1.preprocess_input is keras.applications.mobilenet.preprocess_input
    assert mobilenet_v2.preprocess_input is keras.applications.mobilenet_v2.preprocess_input
    assert mobilenet_v3.preprocess_input is keras.applications.mobilenet_v3.preprocess_input
    for module, reference in (
        (mobilenet_v1, keras.applications.mobilenet),
        (mobilenet_v2, keras.applications.mobilenet_v2),
        (mobilenet_v3, keras.applications.mobilenet_v3),
        (shufflenet_v2, keras.applications.imagenet_utils),
    ):
        assert module.decode_predictions is reference.decode_predictions
    pixels = np.array([[[[0.0, 127.5, 255.0]]]], dtype="float32")
    np.testing.assert_allclose(shufflenet_v2.preprocess_input(pixels.copy()), [[[[-1.0, 0.0, 1.0]]]])


# ---------------------------------------------------------------- select and rectangular in the builders


def test_builders_select_which_1x1s_become_butterflies():
    names = ["block_1_expand", "block_16_project"]
    model = small_model("v2", select=names)
    fused = sorted(l.name for l in model.layers if isinstance(l, ButterflyFusion))
    assert fused == sorted(names)
    # The others are the pointwise twin's Conv2D 1x1s.
    assert isinstance(model.get_layer("block_2_expand"), keras.layers.Conv2D)
    wide = small_model("shufflenet_v2", select=lambda site: min(site.in_channels, site.out_channels) >= 48)
    for layer in wide.layers:
        if isinstance(layer, ButterflyFusion):
            assert min(layer.plan.in_channels, layer.plan.out_channels) >= 48
    assert any(isinstance(l, ButterflyFusion) for l in wide.layers)
    assert any(
        isinstance(l, keras.layers.Conv2D) and l.kernel_size == (1, 1) and "pointwise" in l.name for l in wide.layers
    )
    with pytest.raises(ValueError, match="no_such_layer"):
        small_model("v1", select=["conv_pw_1", "no_such_layer"])


@pytest.mark.parametrize("family", ["v1", "v2", "shufflenet_v2"])
def test_paper_rule_builders_equal_their_dense_oracle(family):
    model = small_model(family, rectangular="paper")
    fused = [l for l in model.layers if isinstance(l, ButterflyFusion)]
    assert any(l.plan.copies > 1 for l in fused)
    assert all(l.plan.copies == 1 for l in fused if l.plan.in_channels == l.plan.out_channels)
    probe = keras.Model(model.input, [l.input for l in fused])
    x, _ = random_batch(batch=2)
    for layer, layer_input in zip(fused, probe(x, training=False)):
        layer_input = keras.ops.convert_to_numpy(layer_input)
        want = layer_input @ layer.dense_kernel()
        got = keras.ops.convert_to_numpy(layer(layer_input))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=layer.name)


# arXiv 1906.02256, Table 1(c) / appendix Table 4: MobileNetV1+BFT (k = 4) configurations and their FLOPs.
PAPER_TABLE_1 = [(1.0, 96, 14), (1.0, 128, 23), (1.0, 160, 35), (1.0, 192, 51), (2.0, 128, 52), (2.0, 192, 112), (2.0, 224, 150)]


def _reference_convention(model, rows):
    """count_macs with every stage of each square copy counted as n * k MACs (k = 4).

    The reference code gives each of the ceil(log_4 n) stages of an n-channel
    block 4 * n weights (sharing some when n is not a power of 4); our plans
    use smaller radices there (32 channels: 4 x 4 x 2, 320 MACs instead of
    384).
    """
    total = sum(r["macs"] for r in rows)
    for row in rows:
        if row["type"] == "ButterflyFusion":
            plan = model.get_layer(row["name"]).plan
            n = min(plan.in_channels, plan.out_channels)
            positions = row["macs"] // plan.macs
            total += positions * (plan.copies * n * 4 * plan.num_stages - plan.macs)
    return total


@pytest.mark.parametrize("width, size, published", PAPER_TABLE_1)
def test_mobilenet_v1_paper_rule_matches_the_papers_flops(width, size, published):
    from keras_bft.utils import count_macs

    model = applications.MobileNetV1BFT(input_shape=(size, size, 3), width=width, rectangular="paper")
    total, rows = count_macs(model, breakdown=True)
    # Our radices: within 8%. The reference's stage count: within 6%; the remaining gap
    # (width 2.0 about 3M below at every size) is documented in docs/applications.md.
    assert abs(total / 1e6 - published) / published < 0.08, total
    assert abs(_reference_convention(model, rows) / 1e6 - published) / published < 0.06
    # The paper's rule costs more than the default one wherever in != out.
    assert total > count_macs(applications.MobileNetV1BFT(input_shape=(size, size, 3), width=width))


def test_paper_rule_model_exports_exactly(tmp_path):
    from keras_bft import tflite

    model = small_model("v1", rectangular="paper", classifier_activation=None)
    data = tflite.convert(model)
    x, _ = random_batch(batch=2)
    report = tflite.verify(data, model, [x[i : i + 1] for i in range(2)], check_delegation=False)
    assert report.max_rel_error < 1e-4
    from keras_bft import quantization

    # At this size the latency objective folds every butterfly dense: QAT runs the paper's copies folded.
    qat = quantization.quantize_model(model)
    assert all(getattr(layer.layer, "lowering", "dense") == "dense" for layer in qat.layers if hasattr(layer, "layer"))
    # Kept as trained (stages), the copies have no int8 stage chain: a clear error.
    with pytest.raises(ValueError, match="rectangular='paper'"):
        quantization.quantize_model(model, objective=None)
