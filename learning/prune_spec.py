"""What a structured pruning keeps, as typed for ``nebula export --prune``: ``heads:F,ffn:F,layers:N``.

Pure Python (no torch), so that the command line can show the syntax and refuse a bad spec before any model
loads; :func:`nebula.learning.pruning.plan_for` turns a spec and importance scores into a plan.
"""

from __future__ import annotations

from dataclasses import dataclass

SPEC_SYNTAX = "heads:F,ffn:F,layers:N"
SPEC_HELP = (
    f"structured pruning, what to keep: {SPEC_SYNTAX}, any of the three in any order (F: the fraction of each "
    "layer's attention heads / FFN neurons kept, in (0, 1], rounded to a count >= 1; N: how many layers are kept, "
    "the bottom ones), e.g. heads:0.5,ffn:0.5,layers:2; empty: none"
)


@dataclass(frozen=True)
class PruneSpec:
    """What a structured pruning keeps; :meth:`parse` reads the ``heads:F,ffn:F,layers:N`` syntax.

    ``heads`` and ``ffn`` are fractions in (0, 1] of each layer's heads and FFN neurons; ``layers`` is the number
    of layers kept (None: all). Dropped layers are the top ones: of the ways to drop whole layers of a BERT,
    dropping the top ones loses least (Sajjad et al. 2023, "On the effect of dropping layers of pre-trained
    transformer models", top-layer dropping), and the distillation that follows recovers the rest.
    """

    heads: float = 1.0
    ffn: float = 1.0
    layers: int | None = None

    def __post_init__(self) -> None:
        for name in ("heads", "ffn"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:  # also refuses NaN
                raise ValueError(f"{name}:{value}: {name} is the fraction kept per layer, in (0, 1]")
        if self.layers is not None and self.layers < 1:
            raise ValueError(f"layers:{self.layers}: layers is the number of layers kept, >= 1")

    @classmethod
    def parse(cls, text: str) -> PruneSpec:
        """``heads:F,ffn:F,layers:N`` (any subset, any order, each at most once) as a spec.

        Raises
        ------
        ValueError
            An empty spec, an entry that is not ``NAME:VALUE``, an unknown name, a name given twice or a value out
            of range; the message quotes the entry.
        """
        values: dict[str, float | int] = {}
        entries = [e.strip() for e in text.split(",")]
        if not any(entries):
            raise ValueError(f"empty spec; expected {SPEC_SYNTAX}")
        for entry in entries:
            name, sep, value = (part.strip() for part in entry.partition(":"))
            if not sep or not name or not value:
                raise ValueError(f"bad entry {entry!r}: expected NAME:VALUE, as in {SPEC_SYNTAX}")
            if name not in ("heads", "ffn", "layers"):
                raise ValueError(f"bad entry {entry!r}: unknown name {name!r}; known: heads, ffn, layers")
            if name in values:
                raise ValueError(f"bad entry {entry!r}: {name} is given twice")
            try:
                values[name] = int(value) if name == "layers" else float(value)
            except ValueError:
                kind = "an integer" if name == "layers" else "a number"
                raise ValueError(f"bad entry {entry!r}: {value!r} is not {kind}") from None
            try:
                cls(**{name: values[name]})
            except ValueError as err:
                raise ValueError(f"bad entry {entry!r}: {str(err).partition(': ')[2]}") from None
        return cls(**values)

    def __str__(self) -> str:
        parts = [f"heads:{self.heads:g}" if self.heads < 1 else "", f"ffn:{self.ffn:g}" if self.ffn < 1 else ""]
        parts.append("" if self.layers is None else f"layers:{self.layers}")
        return ",".join(p for p in parts if p) or "heads:1"

    def counts(self, *, layers: int, heads: int, neurons: int) -> tuple[int, int, tuple[int, ...]]:
        """Heads and neurons kept per layer, and the layers kept, of a model with ``layers`` layers of ``heads``
        heads and ``neurons`` FFN neurons each.

        Raises
        ------
        ValueError
            The spec keeps more layers than the model has.
        """
        if self.layers is not None and self.layers > layers:
            raise ValueError(f"layers:{self.layers} keeps more layers than the model's {layers}")
        keep = lambda fraction, n: max(1, min(n, int(fraction * n + 0.5)))  # noqa: E731  (round half up)
        return keep(self.heads, heads), keep(self.ffn, neurons), tuple(range(self.layers or layers))
