"""Butterfly stage weights that best match a dense matrix: pure NumPy, no Keras layers.

`fit_kernels(W, plan)` returns stage kernels whose butterfly (residual
included) is close to the `(in, out)` matrix `W` in Frobenius norm; it is how
`keras_bft.replace_pointwise(init="fit")` starts a butterfly from a trained 1x1
conv or Dense kernel.

How, given the target `T = W - residual`:

- One stage: its blocks are entries of `T` (exact where `T` has the
  structure, least squares otherwise).
- Two stages (Monarch-style closed form): entry `(a * g_in + d, e * G2 + j)`
  of the product is `K1[a][d, j] * K2[j][a, e]`, so for each pair `(a, j)`
  the sub-block over `(d, e)` is rank one; its best rank-one approximation
  (SVD) gives both factors. Globally optimal.
- More stages: the first `L - 1` stages are merged into one block stage and
  fitted as two stages in closed form; each merged block is itself an
  `(L - 1)`-stage butterfly (`split_kernels`), fitted recursively. Alternating
  least squares then refines: with all other stages fixed, every product
  entry depends on exactly one entry of stage `l` (one path per input/output
  pair), so the best stage `l` is `(A^T T B^T) / (|A_p|^2 |B_q|^2)` at its
  block positions (`A`, `B`: the products of the stages before and after).
  Each update can only lower the error.

Zero-padded inputs and cropped outputs are left out of the fit (their kernel
entries are set to 0), and the paper's square copies (`plan.copies > 1`) are
fitted copy by copy against their own column (in < out) or row (in > out)
block of `T`. An exactly butterfly-structured `W` is recovered to rounding
error. The products are formed with `oracle.stage_matrix`, the NumPy
definition of a stage.
"""

import dataclasses
import math

import numpy as np

from keras_bft.ops import oracle
from keras_bft.ops import plans


@dataclasses.dataclass
class FitResult:
    """What `fit_kernels` found.

    Attributes:
        kernels: one float64 array per stage, of shape `stage.kernel_shape`.
        rel_error: `||M - W||_F / ||W||_F` with `M` the fitted butterfly's
            dense matrix (residual included), from `oracle.dense_matrix`.
        sweeps: alternating-least-squares sweeps run (0 for one or two stages).
    """

    kernels: list
    rel_error: float
    sweeps: int


def split_kernels(kernels, stages, parts):
    """Splits a chain of stages that runs `parts` independent butterflies into their own kernels.

    Such a chain arises twice: the paper's copies (`plan.copies`), and the
    first `L - 1` stages of a plan seen as the blocks of their merged stage.
    The independent digit sits in the middle of the group index of stage `l`,
    above the digits the later stages still mix.

    Args:
        kernels: one array per stage.
        stages: the `plans.Stage`s of the chain.
        parts: the number of independent butterflies.

    Returns:
        `(sub_stages, per_part)`: the stages of one part and, for each part,
        its list of kernels.
    """
    sub_stages, per_part = [], [[] for _ in range(parts)]
    for i, (kernel, stage) in enumerate(zip(kernels, stages)):
        below = math.prod(s.group_in for s in stages[i + 1 :])
        if stage.groups % (parts * below):
            raise ValueError(
                f"Stage {i} ({stage}) does not split into {parts} independent parts. "
                f"Received: parts={parts}"
            )
        blocks = np.asarray(kernel).reshape(-1, parts, below, stage.group_in, stage.group_out)
        for part in range(parts):
            per_part[part].append(blocks[:, part].reshape(-1, stage.group_in, stage.group_out))
        sub_stages.append(plans.Stage(stage.groups // parts, stage.group_in, stage.group_out))
    return sub_stages, per_part


def join_kernels(per_part, stages):
    """The inverse of `split_kernels`: the chain's kernels from each part's kernels."""
    kernels = []
    for i, stage in enumerate(stages):
        below = math.prod(s.group_in for s in stages[i + 1 :])
        blocks = [
            np.asarray(part[i]).reshape(-1, below, stage.group_in, stage.group_out)
            for part in per_part
        ]
        kernels.append(np.stack(blocks, axis=1).reshape(stage.kernel_shape))
    return kernels


def _one_stage(target, stage):
    """Block g of a single stage sits at rows g*a + p, columns q*G + g."""
    grid = target.reshape(stage.groups, stage.group_in, stage.group_out, stage.groups)
    return np.einsum("gpqg->gpq", grid).copy()


def _two_stages(target, first, second, rows, cols):
    """Closed form: a best rank-one fit of each (group a, channel j) sub-block."""
    k1 = np.zeros(first.kernel_shape)
    k2 = np.zeros(second.kernel_shape)
    a_in, groups2 = first.group_in, second.groups
    # Output e * groups2 + j of channel j, for every e the crop keeps.
    for a in range(first.groups):
        d_valid = min(a_in, max(0, rows - a * a_in))
        if d_valid == 0:
            continue
        block_rows = target[a * a_in : a * a_in + d_valid]
        for j in range(first.group_out):
            e_valid = len(range(j, cols, groups2)) if j < cols else 0
            e_valid = min(e_valid, second.group_out)
            if e_valid == 0:
                continue
            sub = block_rows[:, j : j + e_valid * groups2 : groups2]
            u, s, vt = np.linalg.svd(sub, full_matrices=False)
            scale = math.sqrt(s[0])
            k1[a, :d_valid, j] = u[:, 0] * scale
            k2[j, a, :e_valid] = vt[0] * scale
    return [k1, k2]


def _closed_form(target, stages, rows, cols):
    """Recursive closed-form fit of a chain to `target` (padded in x padded out)."""
    if len(stages) == 1:
        kernel = _one_stage(target, stages[0])
        return [kernel]
    if len(stages) == 2:
        return _two_stages(target, stages[0], stages[1], rows, cols)
    head = plans.ButterflyPlan(stages[0].in_channels, stages[-1].out_channels, tuple(stages))
    merged = head.merge((len(stages) - 1, 1)).stages
    block_kernels, last = _two_stages(target, merged[0], merged[1], rows, cols)
    sub_stages, _ = split_kernels(
        [np.zeros(s.kernel_shape) for s in stages[:-1]], stages[:-1], merged[0].groups
    )
    per_part = []
    block_in = merged[0].group_in
    for g, block in enumerate(block_kernels):
        valid = min(block_in, max(0, rows - g * block_in))
        per_part.append(_closed_form(block, sub_stages, valid, block.shape[1]))
    return join_kernels(per_part, stages[:-1]) + [last]


def _block_entries(left, right, stage):
    """`left[g*a + p] * right[q*G + g]` as a `(G, a, b)` array: an outer product at the stage's block positions."""
    rows = left.reshape(stage.groups, stage.group_in)[:, :, None]
    cols = right.reshape(stage.group_out, stage.groups).T[:, None, :]
    return rows * cols


def _als(target, kernels, stages, rows, cols, sweeps, tol):
    """Alternating least squares over the stages; returns (kernels, sweeps run).

    The stage matrices are sparse (`n * radix` entries), so every product is
    a sparse-times-dense one. Squared path weights multiply along the unique
    path, so the squared column norms of a product of stages are the product
    of the element-wise squared stages applied to a vector of ones.
    """
    from scipy import sparse

    goal = np.zeros((rows, stages[-1].out_channels))
    goal[:, :cols] = target[:rows, :cols]
    goal_norm2 = float(np.sum(goal**2))
    mats = [sparse.csr_array(oracle.stage_matrix(k, s)) for k, s in zip(kernels, stages)]
    previous = None
    for sweep in range(1, sweeps + 1):
        # Right side of stage l: goal @ (S_{l+1} ... S_L)^T and the squared row norms.
        goals, norms = [None] * len(stages), [None] * len(stages)
        x, right = goal, np.zeros(stages[-1].out_channels)
        right[:cols] = 1.0
        for i in range(len(stages) - 1, -1, -1):
            goals[i], norms[i] = x, right
            x = (mats[i] @ x.T).T
            right = mats[i].multiply(mats[i]) @ right
        left = np.zeros(stages[0].in_channels)
        left[:rows] = 1.0
        for i, stage in enumerate(stages):
            numerator = np.zeros((stages[0].in_channels, stage.out_channels))
            numerator[:rows] = goals[i]
            for mat in mats[:i]:
                numerator = mat.T @ numerator
            num = _one_stage(numerator, stage)
            den = _block_entries(left, norms[i], stage)
            kernels[i] = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
            mats[i] = sparse.csr_array(oracle.stage_matrix(kernels[i], stage))
            left = mats[i].multiply(mats[i]).T @ left
        # ||M - goal||^2 from the last stage: M's squared entries are K^2 * den, <M, goal> = K . num.
        error2 = float(np.sum(kernels[-1] ** 2 * den) - 2 * np.sum(kernels[-1] * num)) + goal_norm2
        error = math.sqrt(max(error2, 0.0))
        if previous is not None and previous - error <= tol * max(previous, 1e-300):
            return kernels, sweep
        previous = error
    return kernels, sweeps


def _fit_chain(target, stages, sweeps, tol):
    """Fits a chain (no copies) to `target` of shape (valid rows, valid cols)."""
    rows, cols = target.shape
    padded = np.zeros((stages[0].in_channels, stages[-1].out_channels))
    padded[:rows, :cols] = target
    kernels = _closed_form(padded, stages, rows, cols)
    if len(stages) > 2 and sweeps:
        return _als(target, kernels, stages, rows, cols, sweeps, tol)
    return kernels, 0


def fit_kernels(target, plan, residual=True, sweeps=30, tol=1e-9):
    """Stage kernels of `plan` whose butterfly best matches the dense matrix `target`.

    Args:
        target: the `(plan.in_channels, plan.out_channels)` matrix, `y = x @ W`
            (a Dense kernel, or a 1x1 Conv2D kernel without its two leading
            1-dims).
        plan: a `plans.ButterflyPlan`.
        residual: whether the butterfly adds its input (then `W - I` is fitted).
        sweeps: at most this many alternating-least-squares sweeps (plans of
            three or more stages; one and two stages are solved exactly).
        tol: stop when a sweep lowers the error by less than this fraction.

    Returns:
        A `FitResult`.

    Example:

    >>> plan = plans.make_plan(16, 16, radices=(4, 4))
    >>> w = oracle.dense_matrix([np.ones(s.kernel_shape) for s in plan.stages], plan)
    >>> fit_kernels(w, plan, residual=False).rel_error < 1e-12
    True
    """
    target = np.asarray(target, dtype=np.float64)
    if target.shape != (plan.in_channels, plan.out_channels):
        raise ValueError(
            f"`target` must have shape (in_channels, out_channels) = "
            f"{(plan.in_channels, plan.out_channels)}. Received: shape={target.shape}"
        )
    if not np.all(np.isfinite(target)):
        raise ValueError("`target` must be finite. Received: a matrix with NaN or inf entries")
    if not isinstance(sweeps, int) or sweeps < 0:
        raise ValueError(f"`sweeps` must be a non-negative integer. Received: sweeps={sweeps!r}")
    zeros = [np.zeros(s.kernel_shape) for s in plan.stages]
    goal = target - oracle.dense_matrix(zeros, plan, residual=residual)
    ran = 0
    if plan.copies == 1:
        kernels, ran = _fit_chain(goal, list(plan.stages), sweeps, tol)
    else:
        n = min(plan.in_channels, plan.out_channels)
        sub_stages, _ = split_kernels(zeros, plan.stages, plan.copies)
        per_part = []
        for c in range(plan.copies):
            if plan.in_channels < plan.out_channels:
                part = goal[:, c * n : (c + 1) * n]
            else:
                part = goal[c * n : (c + 1) * n, :]
            fitted, used = _fit_chain(part, sub_stages, sweeps, tol)
            per_part.append(fitted)
            ran = max(ran, used)
        kernels = join_kernels(per_part, plan.stages)
    dense = oracle.dense_matrix(kernels, plan, residual=residual)
    scale = float(np.linalg.norm(target)) or 1.0
    return FitResult(kernels, float(np.linalg.norm(dense - target)) / scale, ran)
