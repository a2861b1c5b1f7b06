"""LiteRT's public runtime APIs, as the rest of keras_bft.tflite uses them.

`compiled_model` opens a model with `ai_edge_litert.compiled_model.CompiledModel`
on the CPU accelerator (XNNPACK) with `CpuOptions(num_threads=...)`; it is what
`benchmark` times and what `fully_delegated` asks (`is_fully_accelerated()`).
`interpreter` opens one with `ai_edge_litert.interpreter.Interpreter`, whose
signature runner and quantization parameters `predict` uses.
"""

import atexit
import contextlib
import gc
import os
import sys
import tempfile

from keras_bft.tflite import graph


@contextlib.contextmanager
def quiet_native_log(what):
    """Runs LiteRT calls with what native code writes to stderr captured.

    LiteRT logs ~20 INFO lines per environment, model and first run, which
    would bury a command's own output. They are dropped on success and added
    to the message of a `RuntimeError` raised inside, prefixed by `what`.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (some embedded interpreters)
        yield
        return
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        except RuntimeError as error:
            os.dup2(saved, 2)
            log.seek(0)
            text = log.read().decode(errors="replace")
            raise RuntimeError(f"{what}: {error}\n{text[-2000:]}") from None
        finally:
            os.dup2(saved, 2)
            os.close(saved)


_ENVIRONMENT = []


def _environment():
    """The LiteRT `Environment` shared by every compiled model of this process."""
    if not _ENVIRONMENT:
        from ai_edge_litert.environment import Environment

        with quiet_native_log("LiteRT could not create its environment"):
            _ENVIRONMENT.append(Environment.create())
        atexit.register(_release_environment)
    return _ENVIRONMENT[0]


def _release_environment():
    # Its teardown logs a line per accelerator; keep them out of the command's output.
    with quiet_native_log("LiteRT teardown"):
        _ENVIRONMENT.clear()
        gc.collect()


@contextlib.contextmanager
def model_file(tflite_model, name="tflite_model"):
    """A path to the model: its own path, or a temporary copy of bytes/a ConversionResult.

    LiteRT maps files page-aligned; XNNPACK can fail to prepare an in-memory
    buffer at an unlucky address.
    """
    if isinstance(tflite_model, (str, os.PathLike)):
        graph.read_bytes(tflite_model, name)  # checked before LiteRT sees it
        yield os.fspath(tflite_model)
        return
    data = graph.read_bytes(tflite_model, name)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.tflite")
        with open(path, "wb") as f:
            f.write(data)
        yield path


def compiled_model(path, threads=1):
    """A `CompiledModel` of the .tflite file at `path` on LiteRT's CPU accelerator.

    Args:
        path: a checked .tflite file (see `model_file`).
        threads: the XNNPACK thread count.

    Returns:
        The `CompiledModel`, in the process' shared `Environment`.

    Raises:
        RuntimeError: LiteRT could not compile the model; the message holds
            LiteRT's own log lines.
    """
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import CpuOptions
    from ai_edge_litert.options import Options

    options = Options(
        hardware_accelerators=HardwareAccelerator.CPU,
        cpu_options=CpuOptions(num_threads=int(threads)),
    )
    environment = _environment()
    with quiet_native_log(f"LiteRT could not compile {path!r}"):
        return CompiledModel.from_file(path, environment=environment, options=options)


def interpreter(path):
    """An allocated `ai_edge_litert.interpreter.Interpreter` (1 thread) of the file at `path`."""
    from ai_edge_litert.interpreter import Interpreter

    with quiet_native_log(f"LiteRT could not load {path!r}"):
        result = Interpreter(model_path=path, num_threads=1)
        result.allocate_tensors()
    return result
