"""`Distiller`: knowledge distillation as a Keras model (fit, callbacks, any backend).

The recipe after `replace_pointwise`: the original model is the teacher, the
butterfly model the student. The student learns from the labels and from the
teacher's softened outputs (Hinton et al., "Distilling the Knowledge in a
Neural Network", 2015), and optionally matches the teacher's activations at
named layers (FitNets-style hints; with `replace_pointwise` the names line
up, since every layer keeps its name).
"""

import keras
from keras import ops


class Distiller(keras.Model):
    """Trains `student` to match `teacher`: logit distillation and optional activation matching.

    The training loss is

        (1 - alpha) * loss(y, student(x))
        + alpha * T^2 * KL(softmax(teacher(x) / T) || softmax(student(x) / T))
        + feature_weight * mean over `feature_layers` of MSE(student layer, teacher layer)

    with `loss` the one given to `compile` (the labels' loss; leave it out to
    distill without labels, then `fit(x)` takes no `y`). The teacher runs in
    inference mode and is never trained. Predicting or evaluating a
    `Distiller` runs the student alone. Only `keras.ops` are used, so it
    trains on every backend, with `fit`, callbacks and `jit_compile`.

    The teacher is frozen (`teacher.trainable` is set to False). Save
    `distiller.student` (the distiller itself holds two models and is not
    meant to be saved).

    Args:
        student: the model to train (functional or Sequential, one output).
        teacher: the trained model, with one output of the same shape.
        temperature: the softmax temperature `T` (> 0).
        alpha: weight of the distillation term in [0, 1].
        from_logits: whether both models output logits. With False (outputs
            are probabilities, e.g. a softmax classifier), their logarithm is
            used as logits (the same softmax at any temperature).
        feature_layers: names of layers present in both models whose outputs
            are matched (same shapes), e.g. the blocks' outputs.
        feature_weight: weight of the activation-matching term.
        **kwargs: `keras.Model` arguments (`name`).

    Example:

    ```python
    student = keras_bft.replace_pointwise(teacher)
    distiller = keras_bft.Distiller(student, teacher, temperature=4.0, alpha=0.9)
    distiller.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    distiller.fit(x_train, y_train, epochs=2, callbacks=[...])
    student.save("student.keras")
    ```
    """

    def __init__(
        self,
        student,
        teacher,
        temperature=4.0,
        alpha=0.9,
        from_logits=True,
        feature_layers=None,
        feature_weight=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (("student", student), ("teacher", teacher)):
            if not isinstance(value, keras.Model):
                raise ValueError(f"`{name}` must be a keras.Model. Received: {name}={value!r}")
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
            raise ValueError(f"`temperature` must be a positive number. Received: temperature={temperature!r}")
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 <= alpha <= 1:
            raise ValueError(f"`alpha` must be a number in [0, 1]. Received: alpha={alpha!r}")
        if not isinstance(from_logits, bool):
            raise ValueError(f"`from_logits` must be a boolean. Received: from_logits={from_logits!r}")
        if not isinstance(feature_weight, (int, float)) or isinstance(feature_weight, bool) or feature_weight < 0:
            raise ValueError(
                f"`feature_weight` must be a non-negative number. Received: feature_weight={feature_weight!r}"
            )
        for name, value in (("student", student), ("teacher", teacher)):
            if len(value.outputs) != 1:
                raise ValueError(
                    f"`{name}` must have one output (the logits or probabilities to distill). "
                    f"Received: {name}={value.name!r} with {len(value.outputs)} outputs"
                )
        feature_layers = list(feature_layers or [])
        if not all(isinstance(n, str) for n in feature_layers):
            raise ValueError(
                f"`feature_layers` must be a list of layer names. Received: feature_layers={feature_layers!r}"
            )
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.from_logits = from_logits
        self.feature_layers = feature_layers
        self.feature_weight = float(feature_weight)
        self._student_taps = self._taps(student, "student")
        self._teacher_taps = self._taps(teacher, "teacher")

    def _taps(self, model, role):
        """A model with the outputs `[output, *feature layer outputs]` (shares the layers)."""
        if not self.feature_layers:
            return None
        outputs = []
        for name in self.feature_layers:
            try:
                outputs.append(model.get_layer(name).output)
            except ValueError as error:
                raise ValueError(
                    f"`feature_layers` names {name!r}, which is not a layer of the {role} "
                    f"{model.name!r}. Received: feature_layers={self.feature_layers!r}"
                ) from error
        return keras.Model(model.inputs, [model.outputs[0], *outputs])

    def _logits(self, outputs):
        if self.from_logits:
            return outputs
        return ops.log(ops.clip(outputs, 1e-7, 1.0))

    def call(self, inputs, training=False):
        if not training:
            return self.student(inputs, training=False)
        if self._student_taps is None:
            student_out, student_feats = self.student(inputs, training=True), []
            teacher_out, teacher_feats = self.teacher(inputs, training=False), []
        else:
            student_out, *student_feats = self._student_taps(inputs, training=True)
            teacher_out, *teacher_feats = self._teacher_taps(inputs, training=False)
        t = self.temperature
        teacher_logp = ops.log_softmax(ops.stop_gradient(self._logits(teacher_out)) / t, axis=-1)
        student_logp = ops.log_softmax(self._logits(student_out) / t, axis=-1)
        kl = ops.sum(ops.exp(teacher_logp) * (teacher_logp - student_logp), axis=-1)
        self.add_loss(self.alpha * t * t * ops.mean(kl))
        if student_feats:
            match = [
                ops.mean(ops.square(s - ops.stop_gradient(f))) for s, f in zip(student_feats, teacher_feats)
            ]
            self.add_loss(self.feature_weight * ops.mean(ops.stack(match)))
        return student_out

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """`keras.Model.compile`; `loss` is the labels' loss, weighted `1 - alpha`.

        Args:
            optimizer: as in `keras.Model.compile`.
            loss: the loss against the labels (None: distill without labels).
            metrics: metrics of the student's output against the labels.
            **kwargs: other `keras.Model.compile` arguments (`jit_compile`, ...).
        """
        if loss is not None:
            kwargs["loss_weights"] = [1.0 - self.alpha]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
