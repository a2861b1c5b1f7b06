"""Butterfly stages in `keras.ops`: the run-time computation, one function per lowering.

Every lowering computes the same function as `oracle.dense_matrix` (the tests
hold them to it); they differ in which ops and how many memory passes run:

- `"group_major"`: one transpose into a `(groups, positions, group_in)` layout,
  then per stage one batched matmul and one transpose. Batched matmuls over all
  positions are the big, efficient kind on every backend.
- `"shuffle"`: per stage a reshape, a `...ga,gab->...gb` einsum and the
  perfect-shuffle transpose, channels kept last.
- `"multiply_sum"`: per stage a broadcast multiply and a sum over the group
  axis, then the shuffle. XLA fuses each stage into one loop, which wins for
  small radices there.
- `"grouped_conv"`: per stage one grouped 1x1 convolution (groups = stage
  groups) on a `(1, positions, 1, channels)` view, then the perfect-shuffle
  transpose. TFLite turns it into CONV_2D, which XNNPACK runs in int8 too
  (it does not take int8 BATCH_MATMUL), so this is the int8 export lowering.
- `"dense"`: the dense matrix, built from the stage kernels (weight-side work,
  constant-folded by TFLite's converter), then one matmul. Only on request:
  this is a dense fold, O(n^2).

Cost is set by the number of stages (memory passes) far more than by MACs; see
docs/benchmarks.md.
"""

import functools

import keras
from keras import ops

LOWERINGS = ("group_major", "shuffle", "multiply_sum", "dense", "grouped_conv")


def default_lowering(plan=None, backend=None):
    """The lowering `"auto"` resolves to for `plan` on `backend`.

    `group_major` on every backend measured so far (docs/benchmarks.md): best or
    tied on TF graphs and LiteRT, best on JAX/XLA CPU at 1024 channels, and the
    lowest training memory. `multiply_sum` wins TF-XLA inference at small
    radices but loses badly on JAX and costs 5x the training memory.
    """
    del plan, backend  # one answer today; the signature is where a new one goes
    return "group_major"


def merge_kernels(kernels, plan, segments):
    """Stage kernels of `plan.merge(segments)`: each run of stages as one block stage.

    Weight-side only (no activations). Merging stages `l` and `l + 1` gives
    block `g` the entries `W_l[g*a' + d', d, e] * W_{l+1}[e*G + g, d', e']` at
    row `d'*a + d`, column `e'*b + e`, where `a, b` / `a', b'` are the group
    sizes of the two stages and `G` the merged group count.
    """
    merged_plan = plan.merge(segments)
    merged, start = [], 0
    for count in segments:
        acc, acc_stage = kernels[start], plan.stages[start]
        for kernel, stage in zip(
            kernels[start + 1 : start + count], plan.stages[start + 1 : start + count]
        ):
            groups = acc_stage.groups // stage.group_in
            a, b = acc_stage.group_in, acc_stage.group_out
            a2, b2 = stage.group_in, stage.group_out
            left = ops.reshape(acc, (groups, a2, a, b))
            right = ops.reshape(kernel, (b, groups, a2, b2))
            product = ops.einsum("gxde,egxy->gxdye", left, right)
            acc = ops.reshape(product, (groups, a2 * a, b2 * b))
            acc_stage = type(stage)(groups, a2 * a, b2 * b)
        merged.append(acc)
        start += count
    return merged, merged_plan


def _channels_to_matrix(x):
    """(..., C) -> (M, C) and the leading shape to restore."""
    lead = ops.shape(x)[:-1]
    return ops.reshape(x, (-1, x.shape[-1])), lead


def _pad_channels(x, padded):
    extra = padded - x.shape[-1]
    if extra:
        x = ops.pad(x, ((0, 0), (0, extra)))
    return x


def _stages_group_major(x, kernels, stages):
    first = stages[0]
    x = ops.reshape(x, (-1, first.groups, first.group_in))
    x = ops.transpose(x, (1, 0, 2))
    for i, (kernel, stage) in enumerate(zip(kernels, stages)):
        x = ops.matmul(x, kernel)  # (groups, M, group_out)
        if i + 1 < len(stages):
            a_next = stages[i + 1].group_in
            # Channel j*G + g*a' + d becomes group j*(G/a') + g, member d.
            x = ops.reshape(x, (stage.groups // a_next, a_next, -1, stage.group_out))
            x = ops.transpose(x, (3, 0, 2, 1))
            x = ops.reshape(x, (stages[i + 1].groups, -1, a_next))
    last = stages[-1]
    x = ops.transpose(x, (1, 2, 0))
    return ops.reshape(x, (-1, last.out_channels))


def _stages_channels_last(x, kernels, stages, multiply_sum):
    for kernel, stage in zip(kernels, stages):
        x = ops.reshape(x, (-1, stage.groups, stage.group_in))
        if multiply_sum:
            x = ops.sum(ops.expand_dims(x, -1) * kernel, axis=-2)
        else:
            x = ops.einsum("mga,gab->mgb", x, kernel)
        x = perfect_shuffle(x, stage.groups, stage.group_out)
    return x


def grouped_conv_kernel(kernel, stage):
    """A stage kernel `(G, a, b)` as a grouped 1x1 conv kernel `(1, 1, a, G * b)`.

    Conv output channel `g * b + j` holds `W[g, :, j]`, group `g`'s block; the
    perfect shuffle then reorders channels to `j * G + g`.
    """
    return ops.reshape(ops.transpose(kernel, (1, 0, 2)), (1, 1, stage.group_in, stage.out_channels))


def conv_order(vector, stage, fill):
    """A per-channel vector of the stage's output (order `j * G + g`) in its conv order `g * b + j`.

    Entries beyond `len(vector)` (cropped output channels) take `fill`.
    """
    groups, group_out = stage.groups, stage.group_out
    extra = groups * group_out - vector.shape[0]
    if extra:
        vector = ops.concatenate([vector, ops.full((extra,), fill, dtype=vector.dtype)])
    return ops.reshape(ops.transpose(ops.reshape(vector, (group_out, groups))), (-1,))


def perfect_shuffle(x, groups, group_out):
    """`(M, groups * group_out)` channels in order `g * b + j` -> order `j * groups + g`."""
    x = ops.reshape(x, (-1, groups, group_out))
    x = ops.transpose(x, (0, 2, 1))
    return ops.reshape(x, (-1, groups * group_out))


@functools.lru_cache(maxsize=None)
def _tf_grouped_conv_1x1():
    import tensorflow as tf

    @tf.custom_gradient
    def conv(x, kernel):
        group_in, out_channels = kernel.shape[2], kernel.shape[3]
        groups = x.shape[-1] // group_in
        group_out = out_channels // groups

        def grad(dy):
            # TF has no CPU gradient for grouped convs outside XLA: the same sums as einsums.
            xr = tf.reshape(x, (-1, groups, group_in))
            dyr = tf.reshape(dy, (-1, groups, group_out))
            kr = tf.reshape(kernel, (group_in, groups, group_out))
            dx = tf.reshape(tf.einsum("mgj,dgj->mgd", dyr, kr), tf.shape(x))
            dk = tf.reshape(tf.einsum("mgd,mgj->dgj", xr, dyr), tf.shape(kernel))
            return dx, dk

        return tf.nn.conv2d(x, kernel, strides=1, padding="VALID"), grad

    return conv


def grouped_conv_1x1(x, kernel):
    """Grouped 1x1 convolution of NHWC `x` (groups = channels / `kernel.shape[2]`)."""
    if keras.backend.backend() == "tensorflow":
        # keras.ops.conv runs grouped convs on TF through a new XLA function
        # per call (recompiled in every eager call: much slower training steps);
        # TF's own grouped Conv2D is correct on CPU (the tests hold it to the
        # NumPy oracle), converts to a grouped CONV_2D, and gets its gradient here.
        return _tf_grouped_conv_1x1()(x, kernel)
    return ops.conv(x, kernel, padding="valid")


def grouped_conv_stages(matrix, kernels, plan, transform_kernel=None, observe=None):
    """The stages of `plan` as grouped 1x1 convolutions, each followed by the perfect shuffle.

    The one stage implementation of the grouped-conv form: `ButterflyFusion`
    and the exporter's `ButterflyStages` run it plain (`"grouped_conv"`
    lowering); quantization-aware training runs it with hooks, so the fake
    quants sit exactly on the tensors of the int8 graph TFLite makes of it
    (one grouped CONV_2D, RESHAPE, TRANSPOSE, RESHAPE per stage).

    Args:
        matrix: `(M, plan.in_channels)` input; zero-padded to `plan.padded_in`
            here (as a matrix: TF's CPU graph optimizer turns a PAD feeding a
            conv directly into a wrong spatially padded conv). For the
            paper's copies (`plan.copies > 1`), their `(M, plan.padded_in)`
            inputs side by side.
        kernels: one `(groups, group_in, group_out)` tensor per stage.
        plan: a `ButterflyPlan`.
        transform_kernel: optional `f(index, stage, conv_kernel) -> conv_kernel`
            applied to each stage's `(1, 1, group_in, out_channels)` conv kernel
            (output channels in conv order; see `conv_order`), e.g. weight fake
            quantization or a folded batch-norm scale.
        observe: optional `f(index, stage, outputs) -> outputs` applied to each
            stage's conv output `(1, M, 1, out_channels)` before its shuffle,
            e.g. an activation range.

    Returns:
        `(M, plan.out_channels)`; for the paper's copies `(M, plan.padded_out)`,
        to be gathered by the caller.
    """
    x = _pad_channels(matrix, plan.padded_in)
    x = ops.reshape(x, (1, -1, 1, plan.padded_in))
    for i, (kernel, stage) in enumerate(zip(kernels, plan.stages)):
        conv_kernel = grouped_conv_kernel(kernel, stage)
        if transform_kernel is not None:
            conv_kernel = transform_kernel(i, stage, conv_kernel)
        x = grouped_conv_1x1(x, conv_kernel)
        if observe is not None:
            x = observe(i, stage, x)
        x = perfect_shuffle(x, stage.groups, stage.group_out)
        x = ops.reshape(x, (1, -1, 1, stage.out_channels))
    x = ops.reshape(x, (-1, plan.padded_out))
    if plan.copies == 1 and plan.padded_out != plan.out_channels:
        x = x[:, : plan.out_channels]
    return x


def dense_from_kernels(kernels, plan, residual=False, dtype=None):
    """The `(in, out)` dense matrix as a tensor, by pushing the identity through the stages."""
    eye = ops.eye(plan.in_channels, dtype=dtype or kernels[0].dtype)
    return butterfly_transform(eye, kernels, plan, residual, "group_major")


def _copies_in(x, plan):
    """(M, in) -> (M, padded_in): the input of each square copy, side by side (paper rule)."""
    copies, n = plan.copies, min(plan.in_channels, plan.out_channels)
    n_pad = plan.padded_in // copies
    if plan.in_channels < plan.out_channels:
        return ops.tile(_pad_channels(x, n_pad), (1, copies))
    chunks = ops.reshape(_pad_channels(x, copies * n), (-1, copies, n))
    if n_pad > n:
        chunks = ops.pad(chunks, ((0, 0), (0, 0), (0, n_pad - n)))
    return ops.reshape(chunks, (-1, plan.padded_in))


def _copies_out(y, x, plan, residual):
    """(M, padded_out) -> (M, out): copy c's output J sits at J * copies + c; concatenate or sum."""
    copies, n = plan.copies, min(plan.in_channels, plan.out_channels)
    y = ops.reshape(y, (-1, plan.padded_out // copies, copies))[:, :n]
    if plan.in_channels < plan.out_channels:
        if residual:
            y = y + ops.expand_dims(x, -1)
        y = ops.reshape(ops.transpose(y, (0, 2, 1)), (-1, copies * n))
        return y[:, : plan.out_channels]
    y = ops.sum(y, axis=-1)
    if residual:
        y = y + ops.sum(ops.reshape(_pad_channels(x, copies * n), (-1, copies, n)), axis=1)
    return y


def butterfly_transform(x, kernels, plan, residual=False, lowering="group_major"):
    """Applies the butterfly transform of `plan` to the last axis of `x`.

    Args:
        x: tensor of shape `(..., plan.in_channels)`.
        kernels: one tensor per stage, of shape `stage.kernel_shape`.
        plan: a `ButterflyPlan`.
        residual: add the input (identity on the first min(in, out) channels;
            with the paper's copies, each copy's input to its output).
        lowering: one of `LOWERINGS`.

    Returns:
        Tensor of shape `(..., plan.out_channels)`.
    """
    if lowering not in LOWERINGS:
        raise ValueError(f"`lowering` must be one of {LOWERINGS}. Received: lowering={lowering!r}")
    matrix, lead = _channels_to_matrix(x)
    if lowering == "dense":
        y = ops.matmul(matrix, dense_from_kernels(kernels, plan, residual, matrix.dtype))
        return ops.reshape(y, (*lead, plan.out_channels))
    if plan.copies > 1:
        y = _copies_in(matrix, plan)
    else:
        y = _pad_channels(matrix, plan.padded_in)
    if lowering == "grouped_conv":
        y = grouped_conv_stages(y, kernels, plan)
    elif lowering == "group_major":
        y = _stages_group_major(y, kernels, plan.stages)
    else:
        y = _stages_channels_last(y, kernels, plan.stages, lowering == "multiply_sum")
    if plan.copies > 1:
        y = _copies_out(y, matrix, plan, residual)
        return ops.reshape(y, (*lead, plan.out_channels))
    if plan.padded_out != plan.out_channels:
        y = y[:, : plan.out_channels]
    if residual:
        if plan.in_channels > plan.out_channels:
            y = y + matrix[:, : plan.out_channels]
        else:
            y = y + _pad_channels(matrix, plan.out_channels)
    return ops.reshape(y, (*lead, plan.out_channels))
