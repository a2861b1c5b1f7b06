"""`Distiller`: Keras' own `keras.distillation.Distiller`, preset for a model after `replace_pointwise`.

The recipe after a swap: the original model is the teacher, the butterfly
model the student. The student learns from the labels and from the teacher's
softened outputs (Hinton et al., "Distilling the Knowledge in a Neural
Network", 2015), and optionally matches the teacher's activations at named
layers (FitNets-style hints; with `replace_pointwise` the names line up,
since every layer keeps its name).

Keras does the training (`keras.distillation`, Keras >= 3.12); this module
only chooses its losses and weights from four numbers and adds one thing
Keras' `LogitsDistillation` lacks: teachers and students that end in a
softmax (every keras.applications classifier by default).
"""

import keras
from keras import ops

from keras_bft.ops import arguments


@keras.saving.register_keras_serializable(package="keras_bft")
class SoftTargetDistillation(keras.distillation.LogitsDistillation):
    """`keras.distillation.LogitsDistillation` (tempered KL, times T^2) for logits or probabilities.

    Args:
        temperature: the softmax temperature `T` (> 0).
        from_logits: whether the models output logits. With False (they end
            in a softmax), the log of the probabilities is used as the logits:
            it has the same softmax at every temperature, so the loss is the
            one the logits would give.
    """

    def __init__(self, temperature=4.0, from_logits=True):
        # An instance, not Keras' default "kl_divergence": that string resolves to the function, which
        # misses LogitsDistillation's softmax branch (Keras 3.13-3.15): a KL of clipped logits, no T^2.
        super().__init__(temperature=temperature, loss=keras.losses.KLDivergence())
        self.from_logits = arguments.boolean("from_logits", from_logits)

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        if not self.from_logits:
            teacher_outputs = ops.log(ops.clip(teacher_outputs, 1e-7, 1.0))
            student_outputs = ops.log(ops.clip(student_outputs, 1e-7, 1.0))
        return super().compute_loss(teacher_outputs, student_outputs, **kwargs)

    def get_config(self):
        return {"temperature": self.temperature, "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="keras_bft")
class Distiller(keras.distillation.Distiller):
    """Trains `student` to match `teacher`: Keras' Distiller with the losses of a swap.

    The training loss is

        (1 - alpha) * loss(y, student(x))
        + alpha * (T^2 * KL(softmax(teacher(x) / T) || softmax(student(x) / T))
                   + feature_weight * mean over `feature_layers` of MSE(student layer, teacher layer))

    with `loss` the one given to `compile`. It is
    `keras.distillation.Distiller(teacher, student, distillation_losses=[SoftTargetDistillation(T),
    FeatureDistillation("mse", name, name) for each feature layer], distillation_loss_weights=[1,
    feature_weight / len(feature_layers), ...], student_loss_weight=1 - alpha)`, so everything Keras'
    Distiller does holds: the teacher is frozen (`teacher.trainable` is set to False) and runs in
    inference mode; `fit` logs `student_loss`, `distillation_loss` and `total_loss`; predicting runs the
    student; `fit(x)` without labels distills from the teacher alone (the label term is skipped);
    every backend, callbacks and `jit_compile` work. The arguments are keyword-only: Keras' order is
    (teacher, student) and a swapped pair would silently train the wrong model.

    Args:
        teacher: the trained model (functional or Sequential, one output).
        student: the model to train, with an output of the same shape.
        temperature: the softmax temperature `T` (> 0).
        alpha: weight of the distillation terms in [0, 1] (0: labels only).
        from_logits: whether both models output logits; False for models
            ending in a softmax (see `SoftTargetDistillation`).
        feature_layers: names of layers present in both models whose outputs
            are matched (same shapes), e.g. the feature maps a detector taps.
        feature_weight: weight of the activation-matching term, relative to
            the logits term (>= 0).
        **kwargs: `keras.Model` arguments (`name`).

    Example:

    >>> import numpy as np, keras, keras_bft
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(64, 3, activation="relu", name="stem")(inputs)
    >>> x = keras.layers.Conv2D(64, 1, activation="relu", name="pw")(x)
    >>> x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    >>> teacher = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))
    >>> student = keras_bft.replace_pointwise(teacher, select=["pw"])
    >>> distiller = keras_bft.Distiller(teacher=teacher, student=student, temperature=4.0, alpha=0.9)
    >>> distiller.compile(optimizer="adam",
    ...                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> x, y = np.random.rand(32, 8, 8, 3), np.random.randint(0, 10, 32)
    >>> history = distiller.fit(x, y, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['distillation_loss', 'loss', 'student_loss', 'total_loss']
    >>> student.get_layer("pw").__class__.__name__  # save `distiller.student`, or the distiller
    'ButterflyFusion'
    """

    def __init__(
        self,
        *,
        teacher,
        student,
        temperature=4.0,
        alpha=0.9,
        from_logits=True,
        feature_layers=None,
        feature_weight=1.0,
        name="distiller",
        **kwargs,
    ):
        for role, value in (("teacher", teacher), ("student", student)):
            if not isinstance(value, keras.Model):
                raise ValueError(f"`{role}` must be a keras.Model. Received: {role}={value!r}")
            if not value.built or not getattr(value, "outputs", None):
                raise ValueError(
                    f"`{role}` must be a built functional or Sequential model. Received: {role}={value.name!r}"
                )
            if len(value.outputs) != 1:
                raise ValueError(
                    f"`{role}` must have one output (the logits or probabilities to distill). "
                    f"Received: {role}={value.name!r} with {len(value.outputs)} outputs"
                )
        temperature = arguments.real("temperature", temperature, 0, low_open=True)
        alpha = arguments.real("alpha", alpha, 0, 1)
        feature_weight = arguments.real("feature_weight", feature_weight, 0)
        if isinstance(feature_layers, str) or not all(isinstance(n, str) for n in feature_layers or []):
            raise ValueError(
                f"`feature_layers` must be a list of layer names. Received: feature_layers={feature_layers!r}"
            )
        feature_layers = list(feature_layers or [])
        for layer_name in feature_layers:
            for role, model in (("teacher", teacher), ("student", student)):
                if not any(layer.name == layer_name for layer in model.layers):
                    raise ValueError(
                        f"`feature_layers` names {layer_name!r}, which is not a layer of the {role} "
                        f"{model.name!r}. Received: feature_layers={feature_layers!r}"
                    )
        losses = [SoftTargetDistillation(temperature, from_logits)]
        losses += [keras.distillation.FeatureDistillation("mse", n, n) for n in feature_layers]
        weights = [1.0] + [feature_weight / max(len(feature_layers), 1)] * len(feature_layers)
        super().__init__(
            teacher=teacher,
            student=student,
            distillation_losses=losses,
            distillation_loss_weights=weights,
            student_loss_weight=1.0 - alpha,
            name=name,
            **kwargs,
        )
        self.temperature = temperature
        self.alpha = alpha
        self.from_logits = from_logits
        self.feature_layers = feature_layers
        self.feature_weight = feature_weight

    def get_config(self):
        config = super().get_config()
        for derived in ("distillation_losses", "distillation_loss_weights", "student_loss_weight"):
            config.pop(derived)
        config.update(
            temperature=self.temperature,
            alpha=self.alpha,
            from_logits=self.from_logits,
            feature_layers=self.feature_layers,
            feature_weight=self.feature_weight,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for role in ("teacher", "student"):
            config[role] = keras.saving.deserialize_keras_object(config[role])
        return cls(**config)
