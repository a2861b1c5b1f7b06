"""Butterfly stage plans: which groups each stage mixes. Pure Python, no Keras.

A plan is a chain of *stages*. Stage `s` sees `s.groups * s.group_in` channels,
splits them into `s.groups` contiguous groups of `s.group_in`, maps each group
through its own dense `(group_in, group_out)` block, and then applies the
perfect shuffle: the `(groups, group_out)` channel grid is transposed to
`(group_out, groups)`. With square stages of radices `r_1..r_L` (product `n`),
stage `l` mixes digit `l` of the mixed-radix channel index, so after `L` stages
every output depends on every input (the paper's full connectivity) while one
stage costs `n * r_l` MACs per position.

In != out: the transform is a square butterfly on `min(in, out)` channels whose
first stage (when `in > out`) takes `in / groups` inputs per group, or whose last
stage (when `in < out`) emits `out / groups` outputs per group. Cost then follows
`min(in, out)` instead of the paper's `ceil(out / in)` separate square
transforms. Channel counts that do not factor well are zero-padded on the input
and cropped on the output (`padded_in`, `padded_out`): exact, and the waste is
reported by `ButterflyPlan.padding`.

Padding rule: the zero padding of the square core never exceeds its real
channels (`padded <= 2 * min(in, out)`), so the searched channel counts are
bounded and a plan never costs more than twice an unpadded one. Radices are
>= 2, so `n` channels allow at most `max_stages(n)` (= `n.bit_length()`)
stages; asking for more is an error, not a silent pad (8 channels in 8 stages
would run 256).

The paper's rule (`rectangular="paper"`, as in its reference code) is kept
too: `copies = ceil(max / min)` independent square butterflies on `min(in,
out)` channels. When `in < out` every copy reads the whole input and their
outputs are concatenated and cropped to `out`; when `in > out` the input is cut
into `copies` chunks of `out` channels (the last zero-padded), chunk `c` goes
through copy `c`, and the results are summed. The copies run as one chain of
square stages over `copies * n` channels that never mixes the copy digit: it
starts as the top digit of the channel index and, after the last perfect
shuffle, ends as the bottom one (output `J * copies + c` is copy `c`'s output
`J`). `ButterflyPlan.copies` is 1 for every other plan.

Adjacent square stages compose into one block-diagonal stage (`merge`): the
same function with fewer passes, which is what exporters want.
"""

import dataclasses
import functools
import math

from keras_bft.ops import arguments
RECTANGULAR = ("min", "paper")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One butterfly stage: `groups` dense blocks of `(group_in, group_out)`."""

    groups: int
    group_in: int
    group_out: int

    @property
    def in_channels(self):
        return self.groups * self.group_in

    @property
    def out_channels(self):
        return self.groups * self.group_out

    @property
    def kernel_shape(self):
        return (self.groups, self.group_in, self.group_out)

    @property
    def macs(self):
        """Multiply-accumulates per position (= number of weights)."""
        return self.groups * self.group_in * self.group_out


@dataclasses.dataclass(frozen=True)
class ButterflyPlan:
    """A butterfly transform from `in_channels` to `out_channels`.

    `padded_in >= in_channels` is what the first stage reads (zero-padded
    input), `padded_out >= out_channels` what the last stage writes (cropped).
    With `copies > 1` (the paper's in != out rule, see the module docstring)
    the stages run `copies` square butterflies side by side, and `padded_in`,
    `padded_out` count all of them.
    """

    in_channels: int
    out_channels: int
    stages: tuple
    copies: int = 1

    @property
    def padded_in(self):
        return self.stages[0].in_channels

    @property
    def padded_out(self):
        return self.stages[-1].out_channels

    @property
    def num_stages(self):
        return len(self.stages)

    @property
    def radices(self):
        """Square radix of each stage (the block size on the min(in, out) side)."""
        return tuple(min(s.group_in, s.group_out) for s in self.stages)

    @property
    def macs(self):
        """Multiply-accumulates per position of all stages (residual/bias not counted)."""
        return sum(s.macs for s in self.stages)

    @property
    def padding(self):
        """(input channels of zeros, output channels cropped)."""
        if self.copies > 1:
            # Copies read the input `copies` times (in < out) or once in chunks
            # (in > out), and their outputs are concatenated or summed.
            wide_in = self.in_channels < self.out_channels
            reads = self.copies * self.in_channels if wide_in else self.in_channels
            keeps = self.out_channels if wide_in else self.copies * self.out_channels
            return (self.padded_in - reads, self.padded_out - keeps)
        return (
            self.padded_in - self.in_channels,
            self.padded_out - self.out_channels,
        )

    def merge(self, segments):
        """Composes consecutive stages into one stage each.

        `segments` lists how many stages each merged stage takes, e.g. `(2, 3)`
        for a five-stage plan. A merged stage of stages `l..l+j` has blocks of
        `r_l * ... * r_{l+j}`; see `oracle.merge_kernels` for its weights.
        """
        segments = arguments.check_merge_stages(segments, self.num_stages, name="segments")
        merged, start = [], 0
        for count in segments:
            part = self.stages[start : start + count]
            start += count
            group_in = functools.reduce(
                lambda acc, s: acc * s.group_in, part, 1
            )
            group_out = functools.reduce(
                lambda acc, s: acc * s.group_out, part, 1
            )
            groups = part[0].in_channels // group_in
            merged.append(Stage(groups, group_in, group_out))
        return ButterflyPlan(self.in_channels, self.out_channels, tuple(merged), self.copies)


def _factorizations(n, count, max_factor):
    """All non-increasing tuples of `count` factors in [2, max_factor] with product n."""

    @functools.lru_cache(maxsize=None)
    def rec(rest, slots, cap):
        if slots == 0:
            return ((),) if rest == 1 else ()
        out = []
        for f in range(min(cap, rest), 1, -1):
            if rest % f == 0:
                out.extend((f,) + tail for tail in rec(rest // f, slots - 1, f))
        return tuple(out)

    return rec(n, count, max_factor)


def max_stages(n):
    """The most stages `n` channels allow: radices are >= 2 and padding may not exceed `n` (`2**s <= 2n`)."""
    return int(n).bit_length()


def auto_radices(n, butterfly_k=4, num_stages=None):
    """Picks radices for an `n`-channel square butterfly.

    The number of stages is `ceil(log_k(n))` (or `num_stages`). It takes the
    smallest channel count `n' >= n` that splits into that many radices of at
    most `2k`, and of its splits the one with the fewest MACs `n' * sum(radices)`:
    96 channels with k=4 give `(4, 4, 3, 2)`; 58 = 2 x 29 has no 3-stage split,
    so it runs as `(5, 4, 3)` over 60 channels (2 zero-padded). Returns
    `(radices, n')`.

    The search stops at `n' = 2n` (the padding rule, see the module
    docstring), where a power of two always splits for any `num_stages <=
    max_stages(n)`; more stages raise ValueError.
    """
    n = arguments.positive_int("n", n)
    if num_stages is None:
        k = arguments.positive_int("butterfly_k", butterfly_k, minimum=2)
        num_stages = max(1, math.ceil(math.log(n) / math.log(k) - 1e-9))
    else:
        num_stages = arguments.positive_int("num_stages", num_stages)
        if num_stages > max_stages(n):
            raise ValueError(
                f"`num_stages` is too large for {n} channels: every stage has a radix >= 2, so "
                f"{num_stages} stages need at least 2**{num_stages} channels, and zero padding may "
                f"not exceed the real channels (at most {max_stages(n)} stages for {n}). "
                f"Received: num_stages={num_stages}"
            )
        k = max(2, math.ceil(n ** (1.0 / num_stages) - 1e-9))
    if num_stages == 1 or n == 1:
        return (n,), n
    # Exact factorizations first: padding adds a pad and a slice op, and odd
    # padded radices (19 x 27 for 512) vectorize worse than 16 x 32.
    for padded in range(n, min(k**num_stages, 2 * n) + 1):
        options = _factorizations(padded, num_stages, 2 * k)
        if options:
            radices = min(options, key=lambda r: (sum(r), r))
            return radices, padded
    raise ValueError(  # unreachable by the power-of-two argument above; kept as a clear error
        f"No {num_stages}-stage split of {n} to {2 * n} channels into radices of at most {2 * k}. "
        f"Received: n={n}, num_stages={num_stages}"
    )


def check_rectangular(rectangular):
    """Validates the `rectangular` argument (plans, ButterflyFusion, builders) and returns it."""
    if rectangular not in RECTANGULAR:
        raise ValueError(
            f"`rectangular` must be one of {RECTANGULAR}. Received: rectangular={rectangular!r}"
        )
    return rectangular


def make_plan(
    in_channels, out_channels, butterfly_k=4, radices=None, num_stages=None, rectangular="min"
):
    """Builds the plan of a butterfly transform from `in_channels` to `out_channels`.

    Args:
        in_channels: input channels (>= 1).
        out_channels: output channels (>= 1).
        butterfly_k: target radix; the stage count is `ceil(log_k(min(in, out)))`.
        radices: explicit radices (integers >= 2), product equal to
            `min(in_channels, out_channels)`; overrides `butterfly_k`.
        num_stages: explicit number of stages, at most
            `max_stages(min(in_channels, out_channels))` (zero padding never
            exceeds the real channels); overrides `butterfly_k`.
        rectangular: how in != out is built: `"min"` (one butterfly on
            `min(in, out)` channels with a rectangular first or last stage) or
            `"paper"` (`ceil(max / min)` square copies, the paper's rule).

    Returns:
        A `ButterflyPlan`.
    """
    in_channels = arguments.positive_int("in_channels", in_channels)
    out_channels = arguments.positive_int("out_channels", out_channels)
    butterfly_k, radices, num_stages = arguments.check_butterfly(butterfly_k, radices, num_stages)
    check_rectangular(rectangular)
    core = min(in_channels, out_channels)
    if radices is not None:
        if math.prod(radices) != core:
            raise ValueError(
                "The product of `radices` must equal min(input channels, filters) "
                f"= {core}. Received: radices={list(radices)} (product {math.prod(radices)})"
            )
        padded = core
    else:
        radices, padded = auto_radices(core, butterfly_k, num_stages)
        # The rectangular stage costs max(in, out) * its radix: give it the smallest.
        wide_last = rectangular == "min" and in_channels < out_channels
        radices = tuple(sorted(radices, reverse=wide_last))
    if rectangular == "paper" and in_channels != out_channels:
        copies = -(-max(in_channels, out_channels) // core)
        stages = tuple(Stage(copies * padded // r, r, r) for r in radices)
        return ButterflyPlan(in_channels, out_channels, stages, copies)
    stages = [Stage(padded // r, r, r) for r in radices]
    if in_channels > out_channels:
        first = stages[0]
        group_in = -(-in_channels // first.groups)
        stages[0] = Stage(first.groups, group_in, first.group_out)
    elif in_channels < out_channels:
        last = stages[-1]
        group_out = -(-out_channels // last.groups)
        stages[-1] = Stage(last.groups, last.group_in, group_out)
    return ButterflyPlan(in_channels, out_channels, tuple(stages))
