"""Which channel-fusion layers become butterflies: the `select` argument of
`keras_bft.replace_pointwise` and of the `keras_bft.applications` builders.

`select` is `None` (the caller's default), a list of layer names, or a
predicate called with a `PointwiseSite` (name, channels, kind and, in
`replace_pointwise`, the Keras layer itself) that returns whether the layer
becomes a `ButterflyFusion`.
"""

import dataclasses

# The default of replace_pointwise: below 64 channels a butterfly saves too
# little to be worth its accuracy cost (docs/accuracy.md has the measurement).
DEFAULT_MIN_CHANNELS = 64


@dataclasses.dataclass(frozen=True)
class PointwiseSite:
    """A 1x1 Conv2D or Dense layer that may become a `ButterflyFusion`.

    Attributes:
        name: the layer's name.
        path: `outer/inner` for a layer of a nested model, else the name.
        in_channels: input channels (features).
        out_channels: output channels (filters / units).
        kind: `"Conv2D"` or `"Dense"`.
        layer: the Keras layer (in `replace_pointwise`), or `None` (in the
            builders, where the layer does not exist yet).
    """

    name: str
    path: str
    in_channels: int
    out_channels: int
    kind: str
    layer: object = None


def at_least_64_channels(site):
    """The default rule of `replace_pointwise`: at least 64 input and 64 output channels."""
    return site.in_channels >= DEFAULT_MIN_CHANNELS and site.out_channels >= DEFAULT_MIN_CHANNELS


def every_site(site):
    """The builders' default: every channel-fusion 1x1 becomes a butterfly (the paper's models)."""
    del site
    return True


class Selection:
    """A validated `select` argument: call it with a `PointwiseSite`, then `check_names()`.

    Args:
        select: `None`, a list (or tuple/set) of layer names or paths, or a
            callable `select(site) -> bool`.
        default: the predicate `None` stands for.
    """

    def __init__(self, select, default):
        self.select = select
        self.names = None
        self.seen = []
        if select is None:
            self.predicate = default
        elif callable(select):
            self.predicate = select
        elif isinstance(select, (list, tuple, set, frozenset)) and all(isinstance(n, str) for n in select):
            self.names = set(select)
            self.predicate = None
        else:
            raise ValueError(
                "`select` must be None, a list of layer names, or a function of a PointwiseSite "
                f"returning a bool. Received: select={select!r}"
            )

    def __call__(self, site):
        self.seen.append(site)
        if self.names is not None:
            return site.name in self.names or site.path in self.names
        return bool(self.predicate(site))

    def check_names(self):
        """Raises when a listed name matched no candidate layer."""
        if self.names is None:
            return
        known = {s.name for s in self.seen} | {s.path for s in self.seen}
        missing = sorted(self.names - known)
        if missing:
            candidates = ", ".join(s.path for s in self.seen) or "none"
            raise ValueError(
                f"`select` names {missing}, which are not channel-fusion layers (1x1 Conv2D with "
                f"stride 1, or Dense) of the model. Candidates: {candidates}. "
                f"Received: select={sorted(self.names)!r}"
            )
