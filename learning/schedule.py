"""When each distillation loss applies: a warm-up, a distill and a fine-tune phase, in epochs.

The phases follow TinyBERT's two-stage recipe (Jiao et al. 2020, section 3.2): first the intermediate
layers alone (hidden states, attention or relations; the logits of a student whose layers are still
random carry little), then everything, then the prediction layer alone. Each phase is a number of epochs
and a :class:`LossWeights`; a phase of 0 epochs is skipped. Pure configuration: the training loop asks
:meth:`DistillSchedule.weights_at` for the weights of its epoch and hands them to
:func:`nebula.learning.deep_distill.deep_distill_loss`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from nebula.common.config import ConfigError

PHASES = ("warmup", "distill", "finetune")


def _opt(default: float, help: str) -> float:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class LossWeights:
    """The weight of each term of :func:`nebula.learning.deep_distill.deep_distill_loss`; 0 leaves it out."""

    kd: float = _opt(1.0, "KL of the student from the teacher's logits softened at T (learning/losses.py)")
    ce: float = _opt(0.0, "cross-entropy on hard labels, for inputs that have them")
    hidden: float = _opt(0.0, "MSE between mapped hidden states (TinyBERT)")
    attention: float = _opt(0.0, "KL between mapped attention maps; needs equal head counts")
    relation: float = _opt(0.0, "KL between self-attention relations (MiniLM v2); any head counts")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"loss weight {f.name} must be a finite number >= 0, got {value!r}")
        if not any(self.as_dict().values()):
            raise ConfigError("loss weights are all 0: at least one term must count")

    def as_dict(self) -> dict[str, float]:
        """``{term: weight}`` for every term, zeros included."""
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}

    def active(self) -> tuple[str, ...]:
        """The terms with a weight > 0, in declaration order."""
        return tuple(name for name, w in self.as_dict().items() if w > 0)


@dataclass(frozen=True)
class DistillSchedule:
    """Epochs and loss weights of the three phases, in order: warm-up, distill, fine-tune."""

    warmup_epochs: int = field(default=1, metadata={"help": "epochs on the intermediate layers alone"})
    distill_epochs: int = field(default=2, metadata={"help": "epochs on logits and intermediate layers"})
    finetune_epochs: int = field(default=1, metadata={"help": "epochs on the prediction layer alone"})
    warmup: LossWeights = field(default_factory=lambda: LossWeights(kd=0.0, hidden=1.0, attention=1.0))
    distill: LossWeights = field(default_factory=lambda: LossWeights(kd=1.0, hidden=1.0, attention=1.0))
    finetune: LossWeights = field(default_factory=lambda: LossWeights(kd=1.0))

    def __post_init__(self) -> None:
        for phase in PHASES:
            epochs = getattr(self, f"{phase}_epochs")
            if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
                raise ConfigError(f"{phase}_epochs must be an integer >= 0, got {epochs!r}")
            if not isinstance(getattr(self, phase), LossWeights):
                raise ConfigError(f"{phase} must be LossWeights, got {type(getattr(self, phase)).__name__}")
        if self.total_epochs == 0:
            raise ConfigError("the schedule has no epoch: warmup_epochs + distill_epochs + finetune_epochs is 0")

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.distill_epochs + self.finetune_epochs

    def phase_at(self, epoch: int) -> str:
        """The phase of ``epoch`` (counted from 0): one of :data:`PHASES`."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < self.total_epochs:
            raise ValueError(f"epoch must be an integer in [0, {self.total_epochs}), got {epoch!r}")
        end = 0
        for phase in PHASES:
            end += getattr(self, f"{phase}_epochs")
            if epoch < end:
                return phase
        raise AssertionError("unreachable: epoch < total_epochs")

    def weights_at(self, epoch: int) -> LossWeights:
        """The loss weights of ``epoch``'s phase."""
        return getattr(self, self.phase_at(epoch))

    def uses(self, term: str) -> bool:
        """Whether any phase that has epochs weighs ``term`` (so the loop knows to ask for hidden states, ...)."""
        if term not in LossWeights.__dataclass_fields__:
            raise ValueError(f"unknown loss term {term!r}; known: {list(LossWeights.__dataclass_fields__)}")
        return any(getattr(self, f"{p}_epochs") > 0 and getattr(getattr(self, p), term) > 0 for p in PHASES)
