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


def dense_matrix(kernels, plan, residual=False):
    """The `(in_channels, out_channels)` matrix the plan computes: `y = x @ M`."""
    if len(kernels) != plan.num_stages:
        raise ValueError(
            f"Expected {plan.num_stages} stage kernels. Received: {len(kernels)}"
        )
    matrix = np.eye(plan.in_channels, plan.padded_in)
    for kernel, stage in zip(kernels, plan.stages):
        matrix = matrix @ stage_matrix(kernel, stage)
    matrix = matrix[:, : plan.out_channels]
    if residual:
        matrix = matrix + np.eye(plan.in_channels, plan.out_channels)
    return matrix
