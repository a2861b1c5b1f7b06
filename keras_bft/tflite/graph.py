"""Reading a .tflite flatbuffer: operator histogram and tensor types."""

import collections

from ai_edge_litert import schema_py_generated as schema

_OP_NAMES = {
    value: name
    for name, value in vars(schema.BuiltinOperator).items()
    if not name.startswith("_")
}
_TYPE_NAMES = {
    value: name.lower()
    for name, value in vars(schema.TensorType).items()
    if not name.startswith("_")
}


def read_bytes(tflite_model):
    """The flatbuffer bytes of `tflite_model`: bytes as they are, or a path's contents."""
    if isinstance(tflite_model, (bytes, bytearray)):
        return bytes(tflite_model)
    with open(tflite_model, "rb") as f:
        return f.read()


def _model(tflite_model):
    return schema.Model.GetRootAs(read_bytes(tflite_model), 0)


def operators(tflite_model):
    """`(op name, input tensor type)` of every operator of the main subgraph, in order.

    The input type is that of the first non-constant input, so an int8 model
    shows e.g. `("SOFTMAX", "float32")` for a softmax kept in float.
    """
    model = _model(tflite_model)
    graph = model.Subgraphs(0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")
        if builtin == schema.BuiltinOperator.CUSTOM:
            name = "CUSTOM:" + code.CustomCode().decode()
        codes.append(name)
    result = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        dtype = None
        for j in range(op.InputsLength()):
            index = op.Inputs(j)
            if index < 0:
                continue
            tensor = graph.Tensors(index)
            if model.Buffers(tensor.Buffer()).DataLength() == 0:
                dtype = _TYPE_NAMES.get(tensor.Type(), str(tensor.Type()))
                break
        result.append((codes[op.OpcodeIndex()], dtype))
    return result


def op_histogram(tflite_model):
    """`{op name: count}` of the main subgraph, most frequent first."""
    counts = collections.Counter(name for name, _ in operators(tflite_model))
    return dict(counts.most_common())


def io_types(tflite_model):
    """`(input types, output types)` of the main subgraph, as NumPy dtype names."""
    model = _model(tflite_model)
    graph = model.Subgraphs(0)
    inputs = [
        _TYPE_NAMES[graph.Tensors(graph.Inputs(i)).Type()] for i in range(graph.InputsLength())
    ]
    outputs = [
        _TYPE_NAMES[graph.Tensors(graph.Outputs(i)).Type()] for i in range(graph.OutputsLength())
    ]
    return inputs, outputs
