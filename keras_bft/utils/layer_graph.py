"""The layer graph of a functional or Sequential Keras model: read it, rebuild it.

One walker for every pass over a model's graph: `count_macs` reads it, the
exporter's rewrite and `quantize_model` read it and rebuild a new model from
it, layer call by layer call. Keras 3 has no public API for the nodes of a
functional graph (who calls which layer on what), so this module is the one
place that reads them (`KerasTensor._keras_history`, `Operation._inbound_nodes`);
every other module uses `LayerGraph`.
"""

import dataclasses

import keras


@dataclasses.dataclass(frozen=True, eq=False)
class LayerCall:
    """One call of a layer in a model's graph.

    Attributes:
        layer: the layer (or nested model) called.
        args: the positional arguments of the call (KerasTensors and constants).
        kwargs: its keyword arguments.
        inputs: the KerasTensors among the arguments, flattened.
        outputs: the KerasTensors it returned, flattened.
    """

    layer: object
    args: tuple
    kwargs: dict
    inputs: tuple
    outputs: tuple

    @property
    def input_shape(self):
        """Shape of the first input tensor."""
        return tuple(self.inputs[0].shape)

    @property
    def output_shape(self):
        """Shape of the first output tensor."""
        return tuple(self.outputs[0].shape)


@dataclasses.dataclass(frozen=True, eq=False)
class Step:
    """Consecutive calls rebuilt as one: the first call's arguments in, the last call's outputs out."""

    calls: tuple


def _producer(tensor):
    """The Keras node that produced `tensor` (Keras keeps it in private attributes only)."""
    operation, node_index, _ = tensor._keras_history
    return operation._inbound_nodes[node_index]


def _structure(model, name):
    if isinstance(model, keras.Sequential):
        return getattr(model, name + "s")[0]
    return getattr(model, name)


class LayerGraph:
    """The layer calls of a functional or built Sequential model, in execution order.

    Args:
        model: a functional `keras.Model` or a `keras.Sequential` with an input.
        caller: who needs the graph, for the error message (e.g. `"quantize_model"`).

    Raises:
        ValueError: `model` is not a Keras model, or has no graph of layers
            (a subclassed model, or a Sequential without an input).

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> [type(call.layer).__name__ for call in LayerGraph(model).calls]
    ['Dense']
    """

    def __init__(self, model, caller="This function"):
        if not isinstance(model, keras.Model):
            raise ValueError(f"`model` must be a keras.Model. Received: model={model!r}")
        try:
            inputs, outputs = model.inputs, model.outputs
        except (AttributeError, ValueError):
            inputs = outputs = None
        if not inputs or not outputs:
            raise ValueError(
                f"{caller} needs a functional or built Sequential model (a graph of layers, "
                f"with `inputs` and `outputs`). Received: model={model.name!r} "
                f"({type(model).__name__}) without a graph"
            )
        self.model = model
        self.input_structure = _structure(model, "input")
        self.output_structure = _structure(model, "output")
        self.inputs = tuple(keras.tree.flatten(self.input_structure))
        self.outputs = tuple(keras.tree.flatten(self.output_structure))
        self.input_layers = tuple(_producer(t).operation for t in self.inputs)
        self.calls = tuple(self._topological_calls())
        self._producers = {id(t): call for call in self.calls for t in call.outputs}
        self._consumers = {}
        for call in self.calls:
            for tensor in call.inputs:
                self._consumers.setdefault(id(tensor), []).append(call)
        self._output_ids = {id(t) for t in self.outputs}
        self._counts = {}
        for call in self.calls:
            self._counts[id(call.layer)] = self._counts.get(id(call.layer), 0) + 1

    def _topological_calls(self):
        order, seen = [], set()
        for output in self.outputs:
            stack = [(output, False)]
            while stack:
                tensor, expanded = stack.pop()
                node = _producer(tensor)
                if id(node) in seen:
                    continue
                if expanded or node.is_input:
                    seen.add(id(node))
                    if not node.is_input:
                        order.append(
                            LayerCall(
                                node.operation,
                                tuple(node.arguments.args),
                                dict(node.arguments.kwargs),
                                tuple(node.input_tensors),
                                tuple(node.output_tensors),
                            )
                        )
                    continue
                stack.append((tensor, True))
                for parent in reversed(node.input_tensors):
                    stack.append((parent, False))
        return order

    def producer(self, tensor):
        """The call of this graph that returned `tensor`, or None for a model input."""
        return self._producers.get(id(tensor))

    def consumers(self, tensor):
        """The calls of this graph that take `tensor` as an input."""
        return list(self._consumers.get(id(tensor), ()))

    def is_output(self, tensor):
        """Whether `tensor` is one of the model's outputs."""
        return id(tensor) in self._output_ids

    def sole_consumer(self, tensor):
        """The one call that uses `tensor`, or None (several, none, or a model output)."""
        users = self._consumers.get(id(tensor), ())
        if self.is_output(tensor) or len(users) != 1:
            return None
        return users[0]

    def times_called(self, layer):
        """How many calls of this graph call `layer` (a shared layer: more than 1)."""
        return self._counts.get(id(layer), 0)

    def new_inputs(self, shapes=None):
        """Fresh `keras.Input`s like the model's (names, dtypes), with `shapes` (batch first) if given."""
        shapes = shapes or [tuple(t.shape) for t in self.inputs]
        return [
            keras.Input(batch_shape=tuple(shape), dtype=t.dtype, name=layer.name)
            for t, layer, shape in zip(self.inputs, self.input_layers, shapes)
        ]

    def rebuild(self, build, steps=None, inputs=None, name=None, feed=None):
        """A new functional model: the graph with every step rebuilt by `build`.

        Args:
            build: `build(step, args, kwargs)` returns the new outputs of
                `step.calls[-1]` (a tensor, or a list in the order of its
                outputs), given the new arguments of `step.calls[0]`.
            steps: the `Step`s in execution order, covering every call that
                leads to an output; default one step per call.
            inputs: the new model's input tensors (flat list); default
                `new_inputs()`.
            name: the new model's name; default the model's.
            feed: optional `feed(inputs) -> tensors` that the graph's inputs
                stand for (e.g. the inputs after a quantizer); default `inputs`.

        Returns:
            A `keras.Model` with the model's input and output structure.
        """
        steps = steps if steps is not None else [Step((call,)) for call in self.calls]
        inputs = list(inputs) if inputs is not None else self.new_inputs()
        fed = feed(inputs) if feed is not None else inputs
        tensor_map = {id(old): new for old, new in zip(self.inputs, fed)}

        def fill_in(value):
            return tensor_map[id(value)] if isinstance(value, keras.KerasTensor) else value

        for step in steps:
            first = step.calls[0]
            args = keras.tree.map_structure(fill_in, first.args)
            kwargs = keras.tree.map_structure(fill_in, first.kwargs)
            results = keras.tree.flatten(build(step, args, kwargs))
            for old, new in zip(step.calls[-1].outputs, results):
                tensor_map[id(old)] = new
        outputs = [tensor_map[id(t)] for t in self.outputs]
        return keras.Model(
            keras.tree.pack_sequence_as(self.input_structure, inputs),
            keras.tree.pack_sequence_as(self.output_structure, outputs),
            name=name or self.model.name,
        )
