"""Registry of unlearning modes by name (as ``server.aggregation`` registers its rules).

A mode module decorates its class with :func:`register`; :mod:`server.unlearning` imports every
mode module, so ``get_mode("reaggregate")`` works after ``import server.unlearning``.
"""

from __future__ import annotations

from typing import TypeVar

from server.exceptions import InvalidUnlearnRequest
from server.unlearning.base import UnlearnMode

_MODES: dict[str, type[UnlearnMode]] = {}
M = TypeVar("M", bound=type[UnlearnMode])


def register(cls: M) -> M:
    """Class decorator: make ``cls`` available as ``get_mode(cls.name)``."""
    if not (isinstance(cls, type) and issubclass(cls, UnlearnMode)) or not getattr(cls, "name", ""):
        raise TypeError(f"{cls!r} must subclass UnlearnMode and set a non-empty 'name'")
    if _MODES.get(cls.name, cls) is not cls:
        raise TypeError(f"unlearning mode {cls.name!r} is already registered by {_MODES[cls.name].__name__}")
    _MODES[cls.name] = cls
    return cls


def get_mode(name: str) -> UnlearnMode:
    """A new instance of the mode registered as ``name``; InvalidUnlearnRequest names the available ones."""
    try:
        return _MODES[name]()
    except KeyError:
        raise InvalidUnlearnRequest(f"unknown unlearning mode {name!r}; available: {', '.join(available_modes())}") from None


def available_modes() -> tuple[str, ...]:
    return tuple(sorted(_MODES))


def mode_summaries() -> dict[str, str]:
    return {name: _MODES[name].summary for name in available_modes()}
