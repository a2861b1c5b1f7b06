"""Reading a .tflite flatbuffer: validity, signature, metadata, operator histogram and tensor types."""

import collections
import json
import os

import numpy as np

# The metadata entry in which `convert` records the Keras model's input order and
# output structure (the signature keeps neither), so that `predict` takes and
# returns them as the model does (a dict, a list or one array).
KERAS_SIGNATURE_METADATA = "keras_bft.signature"


def _schema():
    # Imported on first use: keeps `keras-bft --help` from loading the 20k-line schema.
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def _names(enum_class, lower=False):
    return {
        value: (name.lower() if lower else name)
        for name, value in vars(enum_class).items()
        if not name.startswith("_")
    }


def read_bytes(tflite_model, name="tflite_model"):
    """The flatbuffer bytes of `tflite_model`, checked to be a LiteRT model.

    Args:
        tflite_model: the model's bytes, a path to a `.tflite` file, or a
            `keras_bft.tflite.ConversionResult`.
        name: the argument name used in error messages (e.g. `"models[1]"`).

    Returns:
        The model as `bytes`.

    Raises:
        ValueError: for a missing file, an empty, truncated or non-TFLite file.
    """
    from keras_bft.tflite.convert import ConversionResult

    if isinstance(tflite_model, ConversionResult):
        return tflite_model.tflite_bytes
    if isinstance(tflite_model, (bytes, bytearray, memoryview)):
        data = bytes(tflite_model)
        received = f"{len(data)} bytes"
    elif isinstance(tflite_model, (str, os.PathLike)):
        path = os.fspath(tflite_model)
        received = repr(path)
        if not os.path.isfile(path):
            raise ValueError(f"No such .tflite file. Received: {name}={received}")
        with open(path, "rb") as f:
            data = f.read()
    else:
        raise TypeError(
            f"`{name}` must be .tflite bytes, a path or a ConversionResult. "
            f"Received: {name}={tflite_model!r} of type {type(tflite_model).__name__}"
        )
    check_flatbuffer(data, f"{name}={received}")
    return data


def check_flatbuffer(data, received):
    """Raises a ValueError naming `received` unless `data` is a complete LiteRT flatbuffer.

    Walks every table the readers here and LiteRT touch (subgraphs, tensors,
    operators, buffers) and checks that each index and each buffer lies inside
    `data`, so a truncated file fails here, not inside a reader.
    """
    if not data:
        raise ValueError(f"The .tflite model is empty. Received: {received}")
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError(
            "Not a LiteRT .tflite model (no 'TFL3' flatbuffer identifier). "
            f"Received: {received}"
        )
    try:
        _check_tables(_schema().Model.GetRootAs(data, 0), len(data))
    except Exception as error:  # struct.error, IndexError, ValueError from a cut file
        raise ValueError(
            f"Not a valid .tflite model (truncated or corrupt: {type(error).__name__}: {error}). "
            f"Received: {received}"
        ) from None


def _check_tables(model, size):
    buffers = model.BuffersLength()
    for i in range(buffers):
        buffer = model.Buffers(i)
        buffer.DataAsNumpy()  # raises when the vector runs past the end
        if buffer.Offset() > 1 and buffer.Offset() + buffer.Size() > size:
            raise ValueError(f"buffer {i} ends past the end of the file")
    codes = model.OperatorCodesLength()
    if model.SubgraphsLength() < 1:
        raise ValueError("no subgraph")
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        tensors = graph.TensorsLength()
        for t in range(tensors):
            tensor = graph.Tensors(t)
            tensor.ShapeAsNumpy()
            if not 0 <= tensor.Buffer() < max(buffers, 1):
                raise ValueError(f"tensor {t} names buffer {tensor.Buffer()} of {buffers}")
        indices = [graph.InputsAsNumpy(), graph.OutputsAsNumpy()]
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            if not 0 <= op.OpcodeIndex() < codes:
                raise ValueError(f"operator {o} has opcode {op.OpcodeIndex()} of {codes}")
            indices += [op.InputsAsNumpy(), op.OutputsAsNumpy()]
        for array in indices:
            array = np.asarray(array)
            if array.size and (array.max() >= tensors or array.min() < -1):
                raise ValueError(f"a tensor index is out of range (of {tensors})")


def _model(tflite_model):
    return _schema().Model.GetRootAs(read_bytes(tflite_model), 0)


def operators(tflite_model):
    """`(op name, input tensor type)` of every operator of the main subgraph, in order.

    The input type is that of the first non-constant input, so an int8 model
    shows e.g. `("SOFTMAX", "float32")` for a softmax kept in float.
    """
    schema = _schema()
    op_names = _names(schema.BuiltinOperator)
    type_names = _names(schema.TensorType, lower=True)
    model = _model(tflite_model)
    graph = model.Subgraphs(0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = op_names.get(builtin, f"BUILTIN_{builtin}")
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
                dtype = type_names.get(tensor.Type(), str(tensor.Type()))
                break
        result.append((codes[op.OpcodeIndex()], dtype))
    return result


def op_histogram(tflite_model):
    """`{op name: count}` of the main subgraph, most frequent first.

    Args:
        tflite_model: bytes, a path or a `ConversionResult`.
    """
    counts = collections.Counter(name for name, _ in operators(tflite_model))
    return dict(counts.most_common())


def io_types(tflite_model):
    """`(input types, output types)` of the main subgraph, as NumPy dtype names."""
    type_names = _names(_schema().TensorType, lower=True)
    model = _model(tflite_model)
    graph = model.Subgraphs(0)
    inputs = [
        type_names[graph.Tensors(graph.Inputs(i)).Type()] for i in range(graph.InputsLength())
    ]
    outputs = [
        type_names[graph.Tensors(graph.Outputs(i)).Type()] for i in range(graph.OutputsLength())
    ]
    return inputs, outputs


def signature(tflite_model, key="serving_default"):
    """`(input names, output names)` of the model's SignatureDef `key`, or None if it has none."""
    model = _model(tflite_model)
    for i in range(model.SignatureDefsLength()):
        definition = model.SignatureDefs(i)
        if definition.SignatureKey().decode() == key:
            inputs = [definition.Inputs(j).Name().decode() for j in range(definition.InputsLength())]
            outputs = [
                definition.Outputs(j).Name().decode() for j in range(definition.OutputsLength())
            ]
            return inputs, outputs
    return None


def metadata(tflite_model, name):
    """The bytes of the model's metadata entry `name`, or None."""
    model = _model(tflite_model)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == name:
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None


def with_metadata(tflite_model, name, value):
    """The model's bytes with the metadata entry `name` set to `value` (bytes)."""
    import flatbuffers

    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(read_bytes(tflite_model), 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(value, dtype=np.uint8)
    model.metadata = list(model.metadata or [])
    for entry in model.metadata:
        if entry.name.decode() == name:
            model.buffers[entry.buffer] = buffer
            break
    else:
        entry = schema.MetadataT()
        entry.name = name
        entry.buffer = len(model.buffers)
        model.buffers.append(buffer)
        model.metadata.append(entry)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def keras_signature(tflite_model):
    """What `convert` recorded: `{"inputs": [...], "outputs": [...], "output_structure": ...}`
    (names in the Keras model's order; structure `"dict"`, `"list"` or `"single"`), or None."""
    raw = metadata(tflite_model, KERAS_SIGNATURE_METADATA)
    return None if raw is None else json.loads(raw.decode())
