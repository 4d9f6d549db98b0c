"""Aggregation rules: client probabilities (K, N, C) -> consensus (N, C).

Each rule lives in its own module and registers itself by name; importing this package
imports them all. Use ``get_rule(name, **params)``; ``available_rules()`` lists the names.

=================  ==========================================================
``mean``           weighted mean (default of FedMD / FedDF)
``entropy``        confidence-weighted, optional sharpening (DS-FL)
``class-support``  per-class weights from label counts
``class-contrast`` offset-aware least squares over the classes each client holds (default)
``robust-contrast`` class-contrast under a Huber loss (no answer can carry an input alone)
``median``         coordinate-wise median (Byzantine-robust)
``trimmed-mean``   coordinate-wise trimmed mean (Byzantine-robust)
=================  ==========================================================
"""

from nebula.server.aggregation import (  # noqa: F401  (registration)
    class_contrast,
    class_support,
    entropy,
    mean,
    median,
    robust_contrast,
    trimmed_mean,
)
from nebula.server.aggregation.base import AggregationError, AggregationRule, check_inputs
from nebula.server.aggregation.registry import available_rules, get_rule, register

__all__ = ["AggregationError", "AggregationRule", "available_rules", "check_inputs", "get_rule", "register"]
