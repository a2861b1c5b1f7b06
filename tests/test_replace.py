"""replace_pointwise and Distiller: a trained model's 1x1 convs and Dense layers as butterflies.

Oracles: the original model's own weights (kept layers must be bit-exact), a
model built by hand with the same ButterflyFusion layers, the dense kernels
(a kernel that is exactly a butterfly must be recovered, and then the new
model computes what the old one did), and count_macs / plan.macs for the
report.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_bft
from keras_bft import ButterflyFusion
from keras_bft.ops import oracle
from keras_bft.utils import count_macs


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def _randomize(model, seed=0):
    """Moves every weight off its init (BN variances stay positive), like training would."""
    rng = np.random.default_rng(seed)
    model.set_weights(
        [w + 0.2 * np.abs(rng.standard_normal(w.shape)).astype(w.dtype) for w in model.get_weights()]
    )
    return model


def _sequential():
    return _randomize(
        keras.Sequential(
            [
                keras.Input((6, 6, 8)),
                keras.layers.Conv2D(64, 3, padding="same", name="stem"),
                keras.layers.Conv2D(96, 1, activation="relu", name="expand"),  # 64 -> 96: replaced
                keras.layers.BatchNormalization(name="bn"),
                keras.layers.DepthwiseConv2D(3, padding="same", name="dw"),
                keras.layers.Conv2D(64, 1, use_bias=False, name="project"),  # 96 -> 64: replaced
                keras.layers.Conv2D(16, 1, name="narrow"),  # 64 -> 16: kept by the default rule
                keras.layers.GlobalAveragePooling2D(name="gap"),
                keras.layers.Dense(10, name="logits"),
            ]
        )
    )


def _nested_functional():
    inner_in = keras.Input((5, 5, 64))
    y = keras.layers.Conv2D(128, 1, activation="relu6", name="inner_pw")(inner_in)
    inner = keras.Model(inner_in, y, name="block")
    inputs = keras.Input((5, 5, 8))
    x = keras.layers.Conv2D(64, 1, name="outer_pw")(inputs)  # 8 -> 64: kept by the default rule
    x = inner(x)
    x = keras.layers.Conv2D(64, 1, strides=2, name="strided")(x)  # stride 2: never a candidate
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(128, activation="relu", name="hidden")(x)  # 64 -> 128: replaced
    return _randomize(keras.Model(inputs, keras.layers.Dense(3, name="out")(x)), seed=1)


def _x(model, seed=0):
    return np.random.default_rng(seed).standard_normal((2, *model.input_shape[1:])).astype("float32")


def _kept_layers_bit_exact(original, new, replaced):
    def flat(model, prefix=""):
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                yield from flat(layer, f"{prefix}{layer.name}/")
            elif not isinstance(layer, keras.layers.InputLayer):  # clone_model makes new inputs
                yield f"{prefix}{layer.name}", layer

    new_layers = dict(flat(new))
    checked = 0
    for path, layer in flat(original):
        twin = new_layers[path]
        if path in replaced:
            assert isinstance(twin, ButterflyFusion), path
            continue
        assert type(twin) is type(layer) and twin is not layer, path
        for a, b in zip(layer.get_weights(), twin.get_weights()):
            np.testing.assert_array_equal(a, b, err_msg=path)
            checked += 1
    return checked


@pytest.mark.parametrize("init", ["fit", "random"])
def test_sequential_kept_weights_are_bit_exact_and_original_untouched(init):
    model = _sequential()
    before, x = _weights(model), _x(model)
    y_before = ops.convert_to_numpy(model(x))
    new, report = keras_bft.replace_pointwise(model, init=init, return_report=True)
    assert [r.path for r in report.layers] == ["expand", "project"]
    assert report.kept == ["narrow", "logits"]  # 64 -> 16 and 64 -> 10: below the default 64
    assert _kept_layers_bit_exact(model, new, {"expand", "project"}) > 0
    expand = new.get_layer("expand")
    assert expand.use_bias and expand.activation is keras.activations.relu and not new.get_layer("project").use_bias
    np.testing.assert_array_equal(ops.convert_to_numpy(expand.bias), ops.convert_to_numpy(model.get_layer("expand").bias))
    # The original model is unchanged.
    for a, b in zip(before, _weights(model)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ops.convert_to_numpy(model(x)), y_before)
    assert new.output_shape == model.output_shape


def test_nested_and_dense_layers_equal_a_manual_construction():
    model = _nested_functional()
    new, report = keras_bft.replace_pointwise(model, return_report=True)
    assert sorted(r.path for r in report.layers) == ["block/inner_pw", "hidden"]
    assert _kept_layers_bit_exact(model, new, {"block/inner_pw", "hidden"}) > 0
    # The same network built by hand, with the replaced layers' weights and the original's others.
    fused_inner, fused_hidden = new.get_layer("block").get_layer("inner_pw"), new.get_layer("hidden")
    inner_in = keras.Input((5, 5, 64))
    inner = keras.Model(inner_in, ButterflyFusion(128, use_bias=True, activation="relu6", name="inner_pw")(inner_in))
    inputs = keras.Input((5, 5, 8))
    x = keras.layers.Conv2D(64, 1, name="outer_pw")(inputs)
    x = inner(x)
    x = keras.layers.Conv2D(64, 1, strides=2, name="strided")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = ButterflyFusion(128, use_bias=True, activation="relu", data_format="channels_last", name="hidden")(x)
    manual = keras.Model(inputs, keras.layers.Dense(3, name="out")(x))
    manual.get_layer("outer_pw").set_weights(model.get_layer("outer_pw").get_weights())
    manual.get_layer("strided").set_weights(model.get_layer("strided").get_weights())
    manual.get_layer("out").set_weights(model.get_layer("out").get_weights())
    inner.get_layer("inner_pw").set_weights(fused_inner.get_weights())
    manual.get_layer("hidden").set_weights(fused_hidden.get_weights())
    x = _x(model)
    np.testing.assert_allclose(ops.convert_to_numpy(new(x)), ops.convert_to_numpy(manual(x)), rtol=1e-5, atol=1e-5)


def test_channels_first_and_exact_butterfly_kernels_give_the_same_function():
    """Kernels that are exactly butterflies (residual included) are recovered: the same function.

    TensorFlow cannot run a channels_first Conv2D on CPU, so the original
    model's output is computed in NumPy.
    """
    inputs = keras.Input((64, 5, 5))
    x = keras.layers.Conv2D(128, 1, activation="relu6", data_format="channels_first", name="pw")(inputs)
    x = keras.layers.GlobalAveragePooling2D(data_format="channels_first")(x)
    model = keras.Model(inputs, keras.layers.Dense(96, name="fc")(x))
    _randomize(model, seed=2)
    for name, (cin, cout) in (("pw", (64, 128)), ("fc", (128, 96))):
        reference = ButterflyFusion(cout, kernel_initializer="random_normal")
        reference.build((None, cin))
        layer = model.get_layer(name)
        layer.kernel.assign(reference.dense_kernel().reshape(layer.kernel.shape))
    new, report = keras_bft.replace_pointwise(model, return_report=True)
    assert new.get_layer("pw").data_format == "channels_first"
    assert all(r.rel_error < 1e-5 for r in report.layers), report
    x = np.random.default_rng(0).standard_normal((2, 64, 5, 5)).astype("float32")
    pw, fc = model.get_layer("pw"), model.get_layer("fc")
    hidden = np.einsum("nchw,cd->ndhw", x, ops.convert_to_numpy(pw.kernel)[0, 0])
    hidden = np.clip(hidden + ops.convert_to_numpy(pw.bias)[:, None, None], 0, 6).mean(axis=(2, 3))
    want = hidden @ ops.convert_to_numpy(fc.kernel) + ops.convert_to_numpy(fc.bias)
    np.testing.assert_allclose(ops.convert_to_numpy(new(x)), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_report_errors_and_fit_beats_random():
    model = _sequential()
    fitted = keras_bft.replace_pointwise(model, return_report=True)[1]
    random = keras_bft.replace_pointwise(model, init="random", return_report=True)[1]
    for f, r in zip(fitted.layers, random.layers):
        assert f.rel_error < r.rel_error, (f, r)
    # The reported error is the layer's own dense matrix against the trained kernel.
    new, report = keras_bft.replace_pointwise(model, return_report=True)
    layer, kernel = new.get_layer("expand"), ops.convert_to_numpy(model.get_layer("expand").kernel)[0, 0]
    error = np.linalg.norm(layer.dense_kernel() - kernel) / np.linalg.norm(kernel)
    assert report.layers[0].rel_error == pytest.approx(error, rel=1e-5)


def test_dry_run_reports_params_and_macs():
    model = _sequential()
    report = keras_bft.replace_pointwise(model, dry_run=True)
    assert report.dry_run and all(r.rel_error is None for r in report.layers)
    new = keras_bft.replace_pointwise(model, init="random")
    assert report.params_before == model.count_params() and report.params_after == new.count_params()
    assert report.macs_before == count_macs(model) and report.macs_after == count_macs(new)
    for row in report.layers:
        layer = new.get_layer(row.path)
        assert row.params_after == layer.count_params()
        assert row.macs_before == 36 * row.in_channels * row.out_channels  # 6 x 6 positions
        assert row.macs_after == 36 * layer.plan.macs
    assert "expand" in str(report) and "Would replace 2" in str(report)


def test_select_by_names_paths_and_predicate():
    model = _nested_functional()
    by_name = keras_bft.replace_pointwise(model, select=["outer_pw", "block/inner_pw"], init="random")
    assert isinstance(by_name.get_layer("outer_pw"), ButterflyFusion)
    assert isinstance(by_name.get_layer("block").get_layer("inner_pw"), ButterflyFusion)
    assert isinstance(by_name.get_layer("hidden"), keras.layers.Dense)
    seen = []
    dense_only = keras_bft.replace_pointwise(
        model, select=lambda site: seen.append(site) or site.kind == "Dense", init="random"
    )
    assert {s.path for s in seen} == {"outer_pw", "block/inner_pw", "hidden", "out"}
    assert all(s.layer is not None for s in seen)
    assert isinstance(dense_only.get_layer("out"), ButterflyFusion)
    assert isinstance(dense_only.get_layer("outer_pw"), keras.layers.Conv2D)
    with pytest.raises(ValueError, match=r"\['strided'\]"):  # stride 2 is not a candidate
        keras_bft.replace_pointwise(model, select=["strided"])


def test_multi_output_dict_model_and_save_load(tmp_path):
    inputs = keras.Input((4, 4, 64), name="image")
    x = keras.layers.Conv2D(64, 1, name="pw")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(
        inputs,
        {"boxes": keras.layers.Dense(4, name="boxes")(pooled), "scores": keras.layers.Dense(64, name="scores")(pooled)},
    )
    _randomize(model, seed=3)
    new = keras_bft.replace_pointwise(model)
    assert isinstance(new.get_layer("pw"), ButterflyFusion) and isinstance(new.get_layer("scores"), ButterflyFusion)
    x = _x(model)
    out = new(x)
    assert set(out) == {"boxes", "scores"}
    np.testing.assert_array_equal(
        ops.convert_to_numpy(new.get_layer("boxes").kernel), ops.convert_to_numpy(model.get_layer("boxes").kernel)
    )
    path = str(tmp_path / "bft.keras")
    new.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    for key in out:
        np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)[key]), ops.convert_to_numpy(out[key]), atol=1e-6)


def test_paper_rule_and_radices_dict():
    model = _sequential()
    new = keras_bft.replace_pointwise(model, rectangular="paper", radices={64: [8, 8]}, init="fit")
    expand = new.get_layer("expand")
    assert expand.plan.copies == 2 and expand.plan.radices == (8, 8)
    kernel = ops.convert_to_numpy(model.get_layer("expand").kernel)[0, 0]
    # The fit of the paper's copies is the oracle's matrix of its kernels.
    kernels = [ops.convert_to_numpy(k).astype(np.float64) for k in expand.kernels]
    np.testing.assert_allclose(oracle.dense_matrix(kernels, expand.plan, True), expand.dense_kernel(), atol=1e-5)
    assert np.linalg.norm(expand.dense_kernel() - kernel) < np.linalg.norm(kernel)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(init="svd"), "init='svd'"),
        (dict(select="expand"), "select='expand'"),
        (dict(select=["nope"]), r"\['nope'\]"),
        (dict(residual="yes"), "residual='yes'"),
        (dict(fit_sweeps=-1), "fit_sweeps=-1"),
        (dict(rectangular="max"), "rectangular='max'"),
        (dict(butterfly_k=1), "butterfly_k=1"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_bft.replace_pointwise(_sequential(), **kwargs)


def test_subclassed_and_unbuilt_models_are_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.pw = keras.layers.Conv2D(64, 1)

        def call(self, x):
            return self.pw(x)

    net = Net()
    net(np.zeros((1, 4, 4, 64), "float32"))
    with pytest.raises(ValueError, match="functional or Sequential"):
        keras_bft.replace_pointwise(net)
    with pytest.raises(ValueError, match="must be built"):
        keras_bft.replace_pointwise(keras.Sequential([keras.layers.Dense(64)]))


# ---------------------------------------------------------------- Distiller


def _classifier(width, seed, activation=None):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 16))
    x = keras.layers.Conv2D(width, 1, activation="relu", name="pw")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(5, activation=activation, name="logits")(x))


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _kl(teacher_logits, student_logits):
    """Mean KL(teacher || student) of the softmax outputs, in NumPy."""
    t, s = _log_softmax(teacher_logits), _log_softmax(student_logits)
    return float(np.mean(np.sum(np.exp(t) * (t - s), -1)))


def _features(model, x, name):
    return ops.convert_to_numpy(keras.Model(model.input, model.get_layer(name).output)(x))


@pytest.mark.parametrize("labels", [True, False], ids=["labels", "no-labels"])
@pytest.mark.parametrize("feature_layers", [None, ["pw", "gap"]], ids=["logits", "features"])
def test_distillation_loss_is_the_documented_formula(labels, feature_layers):
    # (1 - alpha) CE(y, s) + alpha (T^2 KL(softmax(t/T) || softmax(s/T)) + w mean_l MSE(s_l, t_l)), in NumPy.
    teacher, student = _classifier(64, 0), _classifier(64, 1)
    alpha, t, weight = 0.7, 3.0, 0.5
    distiller = keras_bft.Distiller(
        teacher=teacher, student=student, temperature=t, alpha=alpha, feature_layers=feature_layers,
        feature_weight=weight,
    )
    distiller.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).standard_normal((8, 4, 4, 16)).astype("float32")
    y = np.arange(8) % 5 if labels else None
    got = float(ops.convert_to_numpy(distiller.compute_loss(x=x, y=y, y_pred=student(x))))

    s, tl = ops.convert_to_numpy(student(x)), ops.convert_to_numpy(teacher(x))
    want = alpha * t * t * _kl(tl / t, s / t)
    if feature_layers:
        mse = [np.mean((_features(student, x, n) - _features(teacher, x, n)) ** 2) for n in feature_layers]
        want += alpha * weight * np.mean(mse)
    if labels:
        want += (1 - alpha) * -np.mean(_log_softmax(s)[np.arange(8), y])
    assert got == pytest.approx(want, rel=1e-4)
    np.testing.assert_allclose(ops.convert_to_numpy(distiller(x)), s)  # predicting runs the student


def test_softmax_models_distill_as_their_logits_do():
    # from_logits=False: the log of the probabilities has the softmax of the logits at every temperature.
    x = np.random.default_rng(0).standard_normal((8, 4, 4, 16)).astype("float32")
    losses = []
    for activation, from_logits in ((None, True), ("softmax", False)):
        teacher, student = _classifier(64, 0, activation), _classifier(64, 1, activation)
        distiller = keras_bft.Distiller(teacher=teacher, student=student, temperature=2.0, from_logits=from_logits)
        distiller.compile(loss="sparse_categorical_crossentropy")
        losses.append(float(ops.convert_to_numpy(distiller.compute_loss(x=x, y=None, y_pred=student(x)))))
    assert losses[0] > 0.01
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


@pytest.mark.parametrize("feature_layers", [None, ["pw"]])
def test_distillation_moves_the_student_toward_the_teacher(feature_layers):
    teacher = _classifier(64, 0)
    kernel, bias = teacher.get_layer("logits").get_weights()
    teacher.get_layer("logits").set_weights([5 * kernel, bias])  # a confident teacher
    student = keras_bft.replace_pointwise(teacher, init="random", select=["pw"])
    x = np.random.default_rng(1).standard_normal((256, 4, 4, 16)).astype("float32")
    teacher_logits = ops.convert_to_numpy(teacher(x))
    y = np.argmax(teacher_logits, -1)

    def distance():
        logits = ops.convert_to_numpy(student(x))
        return _kl(teacher_logits, logits), np.mean(np.argmax(logits, -1) == y)

    kl_before, agree_before = distance()
    teacher_weights = _weights(teacher)
    distiller = keras_bft.Distiller(
        teacher=teacher, student=student, temperature=2.0, alpha=0.9, feature_layers=feature_layers
    )
    distiller.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    history = distiller.fit(x, y, batch_size=32, epochs=8, verbose=0, callbacks=[keras.callbacks.History()])
    losses = history.history["loss"]
    assert losses[-1] < 0.6 * losses[0], losses
    assert {"student_loss", "distillation_loss", "total_loss"} <= set(history.history)  # Keras' own trackers
    kl_after, agree_after = distance()
    # KL(teacher || student) at least halves; top-1 agreement ends high (where it starts depends on the backend's RNG).
    assert kl_after < 0.5 * kl_before and agree_after >= 0.75, (kl_before, kl_after, agree_before, agree_after)
    for a, b in zip(teacher_weights, _weights(teacher)):
        np.testing.assert_array_equal(a, b)  # the teacher is never trained


def test_a_saved_distiller_loads_with_its_settings_and_both_models(tmp_path):
    teacher, student = _classifier(64, 0), keras_bft.replace_pointwise(_classifier(64, 1), select=["pw"])
    distiller = keras_bft.Distiller(
        teacher=teacher, student=student, temperature=2.5, alpha=0.6, feature_layers=["pw"], feature_weight=0.3
    )
    distiller.compile(loss="sparse_categorical_crossentropy")
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, keras_bft.Distiller) and not loaded.teacher.trainable
    for key in ("temperature", "alpha", "from_logits", "feature_layers", "feature_weight"):
        assert getattr(loaded, key) == getattr(distiller, key), key
    assert loaded.student_loss_weight == pytest.approx(0.4)
    assert isinstance(loaded.student.get_layer("pw"), ButterflyFusion)
    for a, b in zip(_weights(distiller.student) + _weights(teacher), _weights(loaded.student) + _weights(loaded.teacher)):
        np.testing.assert_array_equal(a, b)


def _distiller_case(kwargs):
    teacher, student = _classifier(64, 0), _classifier(64, 1)
    return keras_bft.Distiller(**{"teacher": teacher, "student": student, **kwargs})


# One row per bad argument: (what is passed, the error, what the message must name).
DISTILLER_BAD_ARGUMENTS = [
    (dict(temperature=0), ValueError, "temperature=0"),
    (dict(temperature=float("inf")), ValueError, "temperature=inf"),
    (dict(temperature="4"), ValueError, "temperature='4'"),
    (dict(alpha=1.5), ValueError, r"alpha=1\.5"),
    (dict(alpha=float("nan")), ValueError, "alpha=nan"),
    (dict(alpha=True), ValueError, "alpha=True"),
    (dict(feature_weight=-1), ValueError, "feature_weight=-1"),
    (dict(feature_layers=["nope"]), ValueError, "'nope'"),
    (dict(feature_layers="pw"), ValueError, "feature_layers='pw'"),
    (dict(from_logits="yes"), ValueError, "from_logits='yes'"),
    (dict(teacher=None), ValueError, "teacher=None"),
    (dict(student="model.keras"), ValueError, "student='model.keras'"),
    (dict(student=keras.Sequential([keras.layers.Dense(5)])), ValueError, "built"),
]


@pytest.mark.parametrize("kwargs, error, match", DISTILLER_BAD_ARGUMENTS, ids=[str(r[0]) for r in DISTILLER_BAD_ARGUMENTS])
def test_distiller_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        _distiller_case(kwargs)


def test_distiller_arguments_are_keyword_only():
    # Keras' order is (teacher, student), the old one here was (student, teacher): positional would train the wrong one.
    teacher, student = _classifier(64, 0), _classifier(64, 1)
    with pytest.raises(TypeError, match="positional"):
        keras_bft.Distiller(student, teacher)


def test_a_wholly_frozen_model_gives_a_trainable_copy_with_a_warning():
    # A Distiller freezes its teacher; swapping that teacher again must give a model that trains.
    sequential = _sequential()
    inputs = keras.Input((6, 6, 8))
    x = inputs
    for layer in sequential.layers:
        x = layer(x)
    model = keras.Model(inputs, x)  # functional: Keras' model-level `trainable = True` misses cloned layers
    model.trainable = False
    with pytest.warns(UserWarning, match="frozen"):
        new = keras_bft.replace_pointwise(model, init="random")
    trainable = {id(w) for w in new.trainable_weights}
    assert len(new.trainable_weights) == len([w for w in new.weights if w.trainable]) > 0
    assert all(id(k) in trainable for k in new.get_layer("expand").kernels)
    # A partly frozen model keeps its flags: the user's choice.
    model.trainable = True
    model.get_layer("expand").trainable = False
    new = keras_bft.replace_pointwise(model, init="random")
    assert not new.get_layer("expand").trainable and new.get_layer("project").trainable


def test_distiller_docstring_example_runs():
    import doctest

    from keras_bft.models import distill

    result = doctest.testmod(distill, verbose=False)
    assert result.attempted >= 10 and result.failed == 0
