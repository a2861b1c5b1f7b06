"""Layer benchmark: ButterflyFusion vs Conv2D(n, 1) on TF, XLA and LiteRT, interleaved.

For each shape, every candidate (the Conv2D baseline and each BFT plan x
lowering) is timed round-robin `--rounds` times; each round times `--iters`
calls. The table reports median ms per call and the ratio to Conv2D measured in
the same run.

    python benchmarks/layer.py                     # the issue's full table
    python benchmarks/layer.py --shapes 1x14x14x1024 --runtimes litert1 --rounds 5
"""

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import json  # noqa: E402
import subprocess  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

from keras_bft import ButterflyFusion  # noqa: E402
from keras_bft.ops import LOWERINGS  # noqa: E402

DEFAULT_SHAPES = "1x14x14x256,1x14x14x512,1x14x14x1024,1x7x7x1024,1x56x56x128,32x14x14x256"
# litertN: the layer as trained (plain TFLiteConverter, N threads); exportN: what
# users ship, keras_bft.tflite.convert's exact rewrite (merged stages, folds).
RUNTIMES = ("tf", "xla", "litert1", "litert2", "export1", "export2", "jax")


def _model(shape, layer):
    inputs = keras.Input(shape[1:], batch_size=shape[0])
    return keras.Model(inputs, layer(inputs))


def _candidates(shape, lowerings):
    n = shape[-1]
    out = [("Conv2D", None, lambda: keras.layers.Conv2D(n, 1, use_bias=False))]
    sqrt_k = math.ceil(n**0.5)  # two stages
    for k in (4, sqrt_k):
        for lowering in lowerings:
            out.append(
                (f"BFT k={k} {lowering}", k, lambda k=k, lo=lowering: ButterflyFusion(n, butterfly_k=k, lowering=lo))
            )
    return out


def _tf_runner(model, x, jit):
    fn = tf.function(lambda t: model(t, training=False), jit_compile=jit)
    xt = tf.constant(x)
    fn(xt)
    return lambda: fn(xt).numpy()


def _litert_runner(model, x, threads, export):
    from ai_edge_litert.interpreter import Interpreter

    if export:
        from keras_bft import tflite

        content = tflite.convert(model, "float32", batch_size=x.shape[0]).tflite_bytes
    else:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        content = converter.convert()
    interpreter = Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    interpreter.set_tensor(inp, x)
    interpreter.invoke()
    reference = model(x).numpy()
    got = interpreter.get_tensor(out)
    err = np.abs(got - reference).max() / (np.abs(reference).max() + 1e-12)
    if err > 1e-4:
        raise AssertionError(f"LiteRT output differs from Keras: relative error {err:.2e}")

    def run():
        interpreter.set_tensor(inp, x)
        interpreter.invoke()

    return run


def _jax_runner(model, x):
    import jax

    values = [v.value for v in model.variables]
    fn = jax.jit(lambda vs, t: model.stateless_call(vs, [], t, training=False)[0])
    fn(values, x).block_until_ready()
    return lambda: fn(values, x).block_until_ready()


def _runner(runtime, model, x):
    if runtime == "jax":
        return _jax_runner(model, x)
    if runtime == "tf":
        return _tf_runner(model, x, jit=False)
    if runtime == "xla":
        return _tf_runner(model, x, jit=True)
    return _litert_runner(model, x, threads=int(runtime[-1]), export=runtime.startswith("export"))


def _time(fn, iters):
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) * 1000.0 / iters


def bench_shape(shape, runtimes, lowerings, rounds, iters, progress=None):
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    rows = []
    for runtime in runtimes:
        runners = []
        for label, k, make in _candidates(shape, lowerings):
            model = _model(shape, make())
            runners.append((label, k, model, _runner(runtime, model, x)))
        times = {label: [] for label, *_ in runners}
        for _ in range(rounds):
            for label, _k, _model_, run in runners:
                run()  # warm caches after the other candidates ran
                times[label].append(_time(run, iters))
            if progress is not None:
                progress.add(1)
        conv_ms = statistics.median(times["Conv2D"])
        for label, k, model, _run in runners:
            ms = statistics.median(times[label])
            bft = model.layers[-1]
            plan = bft.plan.radices if isinstance(bft, ButterflyFusion) else None
            rows.append(
                {
                    "shape": "x".join(map(str, shape)),
                    "runtime": runtime,
                    "candidate": label,
                    "radices": plan,
                    "ms": ms,
                    "ratio": ms / conv_ms,
                }
            )
    return rows


def markdown(rows):
    lines = [
        "| shape | runtime | candidate | radices | median ms | ratio to Conv2D |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        radices = "-" if r["radices"] is None else str(list(r["radices"]))
        lines.append(
            f"| {r['shape']} | {r['runtime']} | {r['candidate']} | {radices} | {r['ms']:.3f} | {r['ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated NxHxWxC shapes")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"subset of {RUNTIMES}")
    parser.add_argument("--lowerings", default="auto", help=f"'auto' or a subset of {LOWERINGS}")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json-rows", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    runtimes = args.runtimes.split(",")
    for runtime in runtimes:
        if runtime not in RUNTIMES:
            parser.error(f"unknown runtime {runtime!r}; choose from {RUNTIMES}")
    lowerings = args.lowerings.split(",")
    if args.json_rows:  # child process on the JAX backend
        rows = [r for shape in shapes for r in bench_shape(shape, runtimes, lowerings, args.rounds, args.iters)]
        print("ROWS" + json.dumps(rows))
        return rows
    local = [r for r in runtimes if r != "jax"]
    progress = keras.utils.Progbar(len(shapes) * len(local) * args.rounds, unit_name="round")
    rows = []
    for shape in shapes:
        rows.extend(bench_shape(shape, local, lowerings, args.rounds, args.iters, progress))
    if "jax" in runtimes:
        # Keras picks one backend per process: JAX rows come from a child process.
        cmd = [sys.executable, __file__, "--runtimes", "jax", "--json-rows", "--shapes", args.shapes,
               "--lowerings", args.lowerings, "--rounds", str(args.rounds), "--iters", str(args.iters)]
        out = subprocess.run(cmd, env=dict(os.environ, KERAS_BACKEND="jax"), capture_output=True,
                             text=True, check=True).stdout
        rows.extend(json.loads(out[out.index("ROWS") + 4 :]))
    print()
    print(
        f"{datetime.date.today()} | {platform.machine()} {os.cpu_count()} cores | TF {tf.__version__}, "
        f"Keras {keras.__version__} | `python benchmarks/layer.py {' '.join(argv or sys.argv[1:])}`"
    )
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
