"""Registry of aggregation rules by name (as PEFT registers its tuners).

A rule module decorates its class with :func:`register`; :mod:`nebula.server.aggregation` imports
every rule module, so ``get_rule("median")`` works after ``import nebula.server.aggregation``.
"""

from __future__ import annotations

import inspect
from typing import TypeVar

from nebula.server.aggregation.base import AggregationError, AggregationRule

_RULES: dict[str, type[AggregationRule]] = {}
R = TypeVar("R", bound=type[AggregationRule])


def register(cls: R) -> R:
    """Class decorator: make ``cls`` available as ``get_rule(cls.name)``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a non-empty class attribute 'name'")
    if not (isinstance(cls, type) and issubclass(cls, AggregationRule)):
        raise TypeError(f"{cls.__name__} must subclass AggregationRule")
    if name in _RULES and _RULES[name] is not cls:
        raise TypeError(f"aggregation rule {name!r} is already registered by {_RULES[name].__name__}")
    _RULES[name] = cls
    return cls


def get_rule(name: str, **params: object) -> AggregationRule:
    """A new instance of the rule registered as ``name``, built with ``params``.

    Raises
    ------
    AggregationError
        Unknown name (the message lists the available ones), a parameter the rule does not
        take, or a parameter value the rule refuses.
    """
    try:
        cls = _RULES[name]
    except KeyError:
        raise AggregationError(
            f"unknown aggregation rule {name!r}; available: {', '.join(available_rules())}"
        ) from None
    try:
        inspect.signature(cls).bind(**params)
    except TypeError as exc:
        accepted = [p for p in inspect.signature(cls).parameters]
        raise AggregationError(f"rule {name!r}: {exc}; it accepts {accepted or 'no parameters'}") from None
    return cls(**params)


def available_rules() -> tuple[str, ...]:
    """Names of all registered rules, sorted."""
    return tuple(sorted(_RULES))
