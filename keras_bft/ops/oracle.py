"""The dense matrix of a butterfly plan, in NumPy: the independent oracle.

Built from the definition (block-diagonal stage matrices with the perfect
shuffle as a column permutation), never from the lowering in `lowering.py`, so
tests can hold one against the other.
"""

import numpy as np


def stage_matrix(kernel, stage):
    """The `(stage.in_channels, stage.out_channels)` matrix of one stage."""
    kernel = np.asarray(kernel)
    if kernel.shape != stage.kernel_shape:
        raise ValueError(
            f"Stage kernel must have shape {stage.kernel_shape}. Received: shape={kernel.shape}"
        )
    matrix = np.zeros((stage.in_channels, stage.out_channels), dtype=np.float64)
    for g in range(stage.groups):
        rows = np.arange(g * stage.group_in, (g + 1) * stage.group_in)
        # The perfect shuffle sends pre-shuffle column g*b + j to j*groups + g.
        cols = np.arange(stage.group_out) * stage.groups + g
        matrix[np.ix_(rows, cols)] = kernel[g]
    return matrix


def copies_matrices(plan):
    """The paper's rule as 0/1 matrices: `(read, write, residual)` of a plan with `copies > 1`.

    `read` `(in, padded_in)` places the input where the copies read it (the
    whole input in each copy when in < out; chunk `c` in copy `c` when
    in > out), `write` `(padded_out, out)` takes copy `c`'s output `J` from
    chain position `J * copies + c` to output `c * n + J` (concatenated,
    cropped) or to `J` (summed), and `residual` `(in, out)` adds each copy's
    input to its output.
    """
    copies, n = plan.copies, min(plan.in_channels, plan.out_channels)
    n_pad = plan.padded_in // copies
    read = np.zeros((plan.in_channels, plan.padded_in))
    write = np.zeros((plan.padded_out, plan.out_channels))
    residual = np.zeros((plan.in_channels, plan.out_channels))
    for c in range(copies):
        for j in range(n):
            if plan.in_channels < plan.out_channels:
                read[j, c * n_pad + j] = 1.0
                if c * n + j < plan.out_channels:
                    write[j * copies + c, c * n + j] = 1.0
                    residual[j, c * n + j] = 1.0
            else:
                write[j * copies + c, j] = 1.0
                if c * n + j < plan.in_channels:
                    read[c * n + j, c * n_pad + j] = 1.0
                    residual[c * n + j, j] = 1.0
    return read, write, residual


def dense_matrix(kernels, plan, residual=False):
    """The `(in_channels, out_channels)` matrix the plan computes: `y = x @ M`."""
    if len(kernels) != plan.num_stages:
        raise ValueError(
            f"Expected {plan.num_stages} stage kernels. Received: {len(kernels)}"
        )
    if plan.copies > 1:
        read, write, identity = copies_matrices(plan)
    else:
        read = np.eye(plan.in_channels, plan.padded_in)
        write = np.eye(plan.padded_out, plan.out_channels)
        identity = np.eye(plan.in_channels, plan.out_channels)
    matrix = read
    for kernel, stage in zip(kernels, plan.stages):
        matrix = matrix @ stage_matrix(kernel, stage)
    matrix = matrix @ write
    if residual:
        matrix = matrix + identity
    return matrix
