"""Registry of the methods the federation is compared with, by name (as server/aggregation/registry.py
registers its rules).

Every method runs in this process on the federation's own view of the data (:class:`FederationData`:
the same global test set, public pool and private client splits), with the same student model and the
same budget (rounds, ``public_per_round``, local and digest epochs, learning rate, batch sizes). A
method module subclasses :class:`Method` and decorates it with :func:`register`;
:mod:`nebula.simulation.baselines` imports every module, so ``get_method("fedmd")`` works after
``import nebula.simulation.baselines``.

``kind`` says what leaves a client:

* ``logit-only``: predictions on public inputs, never weights or data (FedMD, DS-FL, Nebula's FD);
* ``weights``: model parameters (FedAvg, FedProx, FedDF): a reference for what weight sharing buys;
* ``bound``: no federation; a lower or upper reference (local-only, centralized, the oracle).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import ClassVar, TypeVar

from nebula.common.config import NebulaConfig
from nebula.common.federation_data import FederationData, build_federation_data
from nebula.simulation.baselines.common import BaselineResult, OnRound

KINDS = ("logit-only", "weights", "bound")


class MethodError(ValueError):
    """An unknown method name, or a parameter a method does not take or refuses."""


class Method(ABC):
    """One method: ``run`` trains it on ``data`` under ``config``'s budget and returns its figures.

    Subclasses set ``name`` (the command-line name) and ``kind`` (one of :data:`KINDS`); their
    ``__init__`` takes the method's own parameters as keyword arguments, with defaults.
    """

    name: ClassVar[str]
    kind: ClassVar[str]

    @abstractmethod
    def run(
        self, data: FederationData, config: NebulaConfig, *, seed: int, on_round: OnRound | None = None
    ) -> BaselineResult:
        """Train and evaluate on ``data``.

        Parameters
        ----------
        data : FederationData
            The split: global test set, public pool, each client's private train and holdout.
        config : NebulaConfig
            The federation's configuration: model, budget, evaluation schedule. The split and the
            adapters' initialisation come from ``config.data.seed``.
        seed : int
            Seed of the training order (shuffles); the benchmark sets it to ``config.data.seed``.
        on_round : callable, optional
            Called after every round with ``{"round", "acc", "seconds"}``.
        """


M = TypeVar("M", bound=type[Method])
_METHODS: dict[str, type[Method]] = {}


def register(cls: M) -> M:
    """Class decorator: make ``cls`` available as ``get_method(cls.name)``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a non-empty class attribute 'name'")
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{cls.__name__} must subclass Method")
    if getattr(cls, "kind", None) not in KINDS:
        raise TypeError(f"{cls.__name__}.kind must be one of {KINDS}, got {getattr(cls, 'kind', None)!r}")
    if name in _METHODS and _METHODS[name] is not cls:
        raise TypeError(f"method {name!r} is already registered by {_METHODS[name].__name__}")
    _METHODS[name] = cls
    return cls


def get_method(name: str, **params: object) -> Method:
    """A new instance of the method registered as ``name``, built with ``params``.

    Raises
    ------
    MethodError
        Unknown name (the message lists the available ones), or a parameter the method does not take.
    """
    try:
        cls = _METHODS[name]
    except KeyError:
        raise MethodError(f"unknown method {name!r}; available: {', '.join(available_methods())}") from None
    try:
        inspect.signature(cls).bind(**params)
    except TypeError as exc:
        accepted = list(inspect.signature(cls).parameters)
        raise MethodError(f"method {name!r}: {exc}; it accepts {accepted or 'no parameters'}") from None
    return cls(**params)


def available_methods() -> tuple[str, ...]:
    """Names of all registered methods: the bounds, then the others, each alphabetically."""
    return tuple(sorted(_METHODS, key=lambda name: (_METHODS[name].kind != "bound", name)))


def method_kind(name: str) -> str:
    """The ``kind`` of the method registered as ``name`` (MethodError if there is none)."""
    if name not in _METHODS:
        raise MethodError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    return _METHODS[name].kind


def run_baseline(name: str, config: NebulaConfig) -> BaselineResult:
    """Method ``name`` with its default parameters on ``config``'s split, training seed ``config.data.seed``:
    what ``nebula simulate --baselines`` runs after the federation."""
    return get_method(name).run(build_federation_data(config.data), config, seed=config.data.seed)
