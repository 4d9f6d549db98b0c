"""Registry of unlearning modes by name (as ``nebula.server.aggregation`` registers its rules).

A mode module decorates its class with :func:`register`. The built-in modes are imported by name the
first time the registry is asked (:data:`BUILTIN_MODES`): the model modes train with torch, and a
process that only stores requests, or a ServerApp that carries out purge requests between rounds,
must not import it for nothing.
"""

from __future__ import annotations

import importlib
from typing import TypeVar

from nebula.server.exceptions import InvalidUnlearnRequest
from nebula.server.unlearning.base import UnlearnMode

# Modules of the built-in modes, imported (and so registered) on first use of the registry.
BUILTIN_MODES = (
    "nebula.server.unlearning.purge",
    "nebula.server.unlearning.reaggregate",
    "nebula.server.unlearning.replay",
    "nebula.server.unlearning.fast_correction",
)
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
    _load_builtin()
    try:
        return _MODES[name]()
    except KeyError:
        raise InvalidUnlearnRequest(
            f"unknown unlearning mode {name!r}; available: {', '.join(available_modes())}"
        ) from None


def available_modes() -> tuple[str, ...]:
    _load_builtin()
    return tuple(sorted(_MODES))


def mode_summaries() -> dict[str, str]:
    return {name: _MODES[name].summary for name in available_modes()}


def _load_builtin() -> None:
    for module in BUILTIN_MODES:
        importlib.import_module(module)  # registers its mode (cached after the first call)
