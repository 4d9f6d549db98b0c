"""The ``--prune`` spec (learning/prune_spec.py): its syntax, the counts it gives a model, and the entry a bad spec
is refused for."""

from __future__ import annotations

import pytest

from nebula.learning.prune_spec import PruneSpec


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("heads:0.5,ffn:0.5,layers:2", PruneSpec(heads=0.5, ffn=0.5, layers=2)),
        ("layers:2", PruneSpec(layers=2)),
        (" ffn: 0.25 , heads:1 ", PruneSpec(heads=1.0, ffn=0.25)),  # any order, spaces allowed
    ],
)
def test_parse(text, spec):
    assert PruneSpec.parse(text) == spec
    assert PruneSpec.parse(str(spec)) == spec  # str() is a spec that parses back


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty spec; expected heads:F,ffn:F,layers:N"),
        ("heads", r"bad entry 'heads': expected NAME:VALUE"),
        ("heads:0.5,", r"bad entry '': expected NAME:VALUE"),
        ("head:0.5", r"bad entry 'head:0.5': unknown name 'head'; known: heads, ffn, layers"),
        ("heads:0.5,heads:0.4", r"bad entry 'heads:0.4': heads is given twice"),
        ("heads:1.5", r"bad entry 'heads:1.5': heads is the fraction kept per layer, in \(0, 1\]"),
        ("ffn:0", r"bad entry 'ffn:0': ffn is the fraction kept per layer"),
        ("ffn:nan", r"bad entry 'ffn:nan': ffn is the fraction"),
        ("ffn:half", r"bad entry 'ffn:half': 'half' is not a number"),
        ("layers:2.5", r"bad entry 'layers:2.5': '2.5' is not an integer"),
        ("heads:0.5,layers:0", r"bad entry 'layers:0': layers is the number of layers kept, >= 1"),
    ],
)
def test_a_bad_spec_names_the_entry(text, match):
    with pytest.raises(ValueError, match=match):
        PruneSpec.parse(text)


def test_counts_round_to_at_least_one_and_keep_the_bottom_layers():
    minilm = dict(layers=3, heads=12, neurons=1536)
    assert PruneSpec.parse("heads:0.5,ffn:0.5,layers:2").counts(**minilm) == (6, 768, (0, 1))
    assert PruneSpec.parse("heads:0.75").counts(**minilm) == (9, 1536, (0, 1, 2))
    assert PruneSpec.parse("heads:0.01,ffn:0.0001").counts(**minilm) == (1, 1, (0, 1, 2))  # never zero
    assert PruneSpec.parse("heads:0.125").counts(layers=1, heads=4, neurons=8) == (1, 8, (0,))  # 0.5 rounds up
    with pytest.raises(ValueError, match="layers:4 keeps more layers than the model's 3"):
        PruneSpec.parse("layers:4").counts(**minilm)
