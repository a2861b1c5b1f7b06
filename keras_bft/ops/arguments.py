"""The argument checks shared by the package: the butterfly arguments (plans, layer, builders), booleans, numbers.

Pure Python, no Keras: each function takes what a user passed, raises
`ValueError` naming the argument and echoing the received value, and returns
the value normalized (Python ints, tuples), so NumPy integers such as
`np.int64(2)` are accepted wherever an `int` is, and floats, strings and bools
never are (`radices="24"` or `[2.5, 4]` are errors, not silently `[2, 4]`).

The rules:

- `butterfly_k`: an integer >= 2.
- `num_stages`: `None` or an integer >= 1. How many stages a given channel
  count allows is a property of the plan (`max_stages`).
- `radices`: `None` or a non-empty list of integers >= 2, one per stage. A
  bare integer is rejected rather than read as a one-stage plan: `radices=8`
  reads as easily as "radix 8 everywhere" (that is `butterfly_k=8`) as
  "one stage of 8" (that is `radices=[8]`).
- `radices` and `num_stages` are exclusive.
- `merge_stages`: `None` or a non-empty list of integers >= 1 (stage counts),
  summing to the number of stages once the plan is known.
"""

import math
import numbers


def is_int(value):
    """Whether `value` is an integer (Python or NumPy), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def boolean(name, value):
    """`value`, or ValueError unless it is a bool (1, "yes" and None are not)."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a boolean. Received: {name}={value!r}")
    return value


def real(name, value, low=-math.inf, high=math.inf, low_open=False, high_open=False):
    """`float(value)`, or ValueError unless `value` is a finite number in the interval.

    The interval is `[low, high]`, each end open when `low_open`/`high_open`;
    NaN, infinities, bools and strings are never numbers here.
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        if low == 0 and high == math.inf:
            what = f"a {'positive' if low_open else 'non-negative'} finite number"
        else:
            what = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"`{name}` must be {what}. Received: {name}={value!r}")
    return float(value)


def positive_int(name, value, minimum=1):
    """`int(value)`, or ValueError unless `value` is an integer >= `minimum`."""
    if not is_int(value) or value < minimum:
        adjective = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"`{name}` must be {adjective}. Received: {name}={value!r}")
    return int(value)


def _int_list(name, value, minimum, what):
    if is_int(value) or isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        hint = ""
        if is_int(value) and name == "radices":
            hint = f": radices=[{value}] for one stage of {value}, butterfly_k={value} for radix {value} everywhere"
        raise ValueError(f"`{name}` must be {what}{hint}. Received: {name}={value!r}")
    values = tuple(value)
    if not values or not all(is_int(v) and v >= minimum for v in values):
        raise ValueError(f"`{name}` must be {what}. Received: {name}={value!r}")
    return tuple(int(v) for v in values)


def check_radices(value, allow_dict=False):
    """Checks `radices`: None, a list of integers >= 2, or (`allow_dict`) a dict `{channels: list}`.

    Returns None, a tuple, or a dict `{int: tuple}` whose radices multiply to
    their channel count.
    """
    what = "a non-empty list of integers >= 2 (one radix per stage)"
    if allow_dict:
        what += " or a dict {channels: list}"
    if value is None:
        return None
    if allow_dict and isinstance(value, dict):
        out = {}
        for channels, entry in value.items():
            entry = _int_list("radices", entry, 2, what)
            if not is_int(channels) or math.prod(entry) != channels:
                raise ValueError(
                    "Each entry of a `radices` dict maps a channel count to radices whose "
                    f"product is that count. Received: radices={value!r}"
                )
            out[int(channels)] = entry
        return out
    if isinstance(value, dict):
        raise ValueError(f"`radices` must be {what}. Received: radices={value!r}")
    return _int_list("radices", value, 2, what)


def check_butterfly(butterfly_k=4, radices=None, num_stages=None, allow_dict=False):
    """Checks the three arguments that shape a butterfly; returns them normalized.

    Returns:
        `(butterfly_k, radices, num_stages)` as int, tuple (or dict with
        `allow_dict`) or None, int or None.
    """
    butterfly_k = positive_int("butterfly_k", butterfly_k, minimum=2)
    if num_stages is not None:
        num_stages = positive_int("num_stages", num_stages)
    checked = check_radices(radices, allow_dict)
    if checked is not None and num_stages is not None and not isinstance(checked, dict):
        raise ValueError(
            "Pass `radices` or `num_stages`, not both. Received: "
            f"radices={radices!r}, num_stages={num_stages!r}"
        )
    return butterfly_k, checked, num_stages


def check_merge_stages(value, num_stages=None, name="merge_stages"):
    """Checks stage counts to merge: a list of integers >= 1, summing to `num_stages` when it is given."""
    if value is None:
        return None
    segments = _int_list(name, value, 1, "a non-empty list of positive integers (stage counts)")
    if num_stages is not None and sum(segments) != num_stages:
        raise ValueError(
            f"`{name}` must sum to the number of stages ({num_stages}). "
            f"Received: {name}={value!r} (sum {sum(segments)})"
        )
    return segments
