"""The distillation schedule (learning/schedule.py): phases by epoch, loss weights, checks that name the field."""

from __future__ import annotations

import pytest

from nebula.common.config import ConfigError
from nebula.learning.schedule import PHASES, DistillSchedule, LossWeights


def test_phases_follow_each_other_in_order():
    schedule = DistillSchedule(warmup_epochs=2, distill_epochs=3, finetune_epochs=1)
    assert schedule.total_epochs == 6
    assert [schedule.phase_at(e) for e in range(6)] == ["warmup"] * 2 + ["distill"] * 3 + ["finetune"]
    assert schedule.weights_at(0) is schedule.warmup
    assert schedule.weights_at(4) is schedule.distill
    assert schedule.weights_at(5) is schedule.finetune


def test_a_phase_of_zero_epochs_is_skipped():
    schedule = DistillSchedule(warmup_epochs=0, distill_epochs=1, finetune_epochs=2)
    assert [schedule.phase_at(e) for e in range(3)] == ["distill", "finetune", "finetune"]
    only = DistillSchedule(warmup_epochs=0, distill_epochs=0, finetune_epochs=1)
    assert only.phase_at(0) == "finetune"


@pytest.mark.parametrize("epoch", [-1, 4, 1.0, True])
def test_epoch_out_of_range(epoch):
    with pytest.raises(ValueError, match=r"epoch must be an integer in \[0, 4\)"):
        DistillSchedule().phase_at(epoch)


def test_default_phases_are_intermediate_then_all_then_logits():
    schedule = DistillSchedule()
    assert schedule.warmup.active() == ("hidden", "attention")
    assert schedule.distill.active() == ("kd", "hidden", "attention")
    assert schedule.finetune.active() == ("kd",)
    assert schedule.uses("attention") and not schedule.uses("relation")
    no_warmup = DistillSchedule(warmup_epochs=0, distill=LossWeights(kd=1.0), finetune=LossWeights(kd=1.0))
    assert not no_warmup.uses("attention")  # only the skipped warm-up weighs it
    with pytest.raises(ValueError, match="unknown loss term 'logits'"):
        schedule.uses("logits")


def test_loss_weights_as_dict():
    weights = LossWeights(kd=0.5, relation=2.0)
    assert weights.as_dict() == {"kd": 0.5, "ce": 0.0, "hidden": 0.0, "attention": 0.0, "relation": 2.0}
    assert weights.active() == ("kd", "relation")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hidden": -1.0}, "loss weight hidden must be a finite number >= 0, got -1.0"),
        ({"kd": float("nan")}, "loss weight kd must be"),
        ({"ce": True}, "loss weight ce must be"),
        ({"attention": "1"}, "loss weight attention must be"),
        ({"kd": 0.0}, "loss weights are all 0"),
    ],
)
def test_loss_weights_refuse(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LossWeights(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"warmup_epochs": -1}, "warmup_epochs must be an integer >= 0, got -1"),
        ({"distill_epochs": 1.5}, "distill_epochs must be an integer"),
        ({"warmup_epochs": 0, "distill_epochs": 0, "finetune_epochs": 0}, "the schedule has no epoch"),
        ({"finetune": {"kd": 1.0}}, "finetune must be LossWeights, got dict"),
    ],
)
def test_schedule_refuses(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DistillSchedule(**kwargs)


def test_phases_constant_names_the_weight_fields():
    schedule = DistillSchedule()
    assert all(isinstance(getattr(schedule, p), LossWeights) for p in PHASES)
