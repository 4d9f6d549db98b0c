"""The global student's deep distillation (learning/deep_fit.py) inside the teacher's round (learning/distill_step.py):
its configuration, its checks on toy configs, and teach_step on the real MiniLM-L6 teacher and MiniLM-L3 student
(a pool of 8 short tweets, 1 epoch)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nebula.common.config import ConfigError, NebulaConfig, command_line_options
from nebula.common.federation_data import build_federation_data
from nebula.common.presets import preset_config
from nebula.common.probabilities import softmax
from nebula.learning.deep_fit import DeepFitResult, deep_layer_pairs
from nebula.learning.distill_step import round_seed, teach_step
from nebula.learning.models import Learner, learner_for, load_trainable_state, trainable_state
from nebula.learning.schedule import LossWeights
from nebula.learning.training import Encoded, encode, fit, predict_logits

# --- configuration -------------------------------------------------------------------------------------------------


def test_the_deep_weights_default_to_0_and_are_command_line_options():
    train = NebulaConfig().train
    assert train.deep_student_weights() == {"hidden": 0.0, "attention": 0.0, "relation": 0.0}
    assert train.layer_map_kind() == "uniform"
    flags = {o.flag: o for o in command_line_options()}
    for flag in ("--student-hidden-weight", "--student-attention-weight", "--student-relation-weight"):
        assert flags[flag].kind is float and flags[flag].default == 0.0
    assert flags["--student-layer-map"].default == "uniform"


@pytest.mark.parametrize(
    "text, kind",
    [("last", "last"), (" 2, 4,6 ", (2, 4, 6)), ("1:2,3:6", ((1, 2), (3, 6))), ("0:0", ((0, 0),))],
)
def test_layer_map_spellings(text, kind):
    config = NebulaConfig.from_flat({"train.student_layer_map": text})
    assert config.train.layer_map_kind() == kind


@pytest.mark.parametrize(
    "flat, message",
    [
        ({"train.student_hidden_weight": -1}, "train.student_hidden_weight must be a finite number >= 0, got -1"),
        ({"train.student_attention_weight": "nan"}, "train.student_attention_weight must be a finite .* got nan"),
        ({"train.student_relation_weight": "inf"}, "train.student_relation_weight must be a finite .* got inf"),
        ({"train.student_relation_weight": "lots"}, "train.student_relation_weight must be float, got 'lots'"),
        ({"train.student_layer_map": "unifrom"}, "train.student_layer_map must be uniform, .* got 'unifrom'"),
        ({"train.student_layer_map": "1:2,3"}, "got '1:2,3'"),
        ({"train.student_layer_map": "1:2:3"}, "got '1:2:3'"),
        ({"train.student_layer_map": "2,-1"}, r"layers >= 0\), got '2,-1'"),
        ({"train.student_layer_map": ""}, "got ''"),
    ],
)
def test_bad_deep_settings_name_the_field_and_value(flat, message):
    with pytest.raises(ConfigError, match=message):
        NebulaConfig.from_flat(flat)


# --- what a teacher-student pair supports (toy model configs) ------------------------------------------------------


def _learner(name: str, layers: int, width: int, heads: int) -> Learner:
    config = SimpleNamespace(num_hidden_layers=layers, hidden_size=width, num_attention_heads=heads)
    return Learner(name, SimpleNamespace(config=config), tokenizer=None, init_state={})


SAME = Encoded([[101, 7, 8, 102], [101, 9, 102]])


@pytest.mark.parametrize(
    "weights, student, kind, match",
    [
        (LossWeights(hidden=1), ("s", 3, 256, 4), "uniform", "needs equal widths, teacher 't' and student 's' .*"),
        (LossWeights(attention=1), ("s", 3, 384, 6), "uniform", "needs equal head counts, .* 12 and 6"),
        (LossWeights(relation=1), ("s", 3, 384, 7), "uniform", "student's 7 heads, which does not divide .* 384"),
        (LossWeights(relation=1), ("s", 3, 384, 12), ((0, 0), (3, 6)), "include layer 0"),
        (LossWeights(hidden=1), ("s", 3, 384, 12), (2, 4), "student_layer_map \\(2, 4\\) for teacher"),
        (LossWeights(hidden=1), ("s", 8, 384, 12), "last", "needs n_student <= n_teacher"),
    ],
)
def test_a_pair_that_cannot_support_the_weights_is_refused(weights, student, kind, match):
    with pytest.raises(ValueError, match=match):
        deep_layer_pairs(_learner("t", 6, 384, 12), _learner(*student), SAME, SAME, weights=weights, kind=kind)


def test_relation_and_hidden_at_one_width_work_across_head_counts_and_depths():
    teacher, student = _learner("t", 6, 384, 12), _learner("s", 3, 384, 6)
    mapping = deep_layer_pairs(teacher, student, SAME, SAME, weights=LossWeights(hidden=1, relation=1), kind="uniform")
    assert mapping == ((1, 2), (2, 4), (3, 6))
    assert deep_layer_pairs(teacher, student, SAME, SAME, weights=LossWeights(hidden=1), kind=((0, 0),)) == ((0, 0),)


def test_different_tokens_are_refused_naming_both_models_and_the_weights():
    other = Encoded([[101, 7, 8, 102], [101, 9, 10, 102]])
    with pytest.raises(
        ValueError, match=r"'t' and student 's' tokenise .* \(first at input 1\): train.student_relation"
    ):
        deep_layer_pairs(
            _learner("t", 6, 384, 12),
            _learner("s", 3, 384, 12),
            other,
            SAME,
            weights=LossWeights(relation=1),
            kind="last",
        )


# --- teach_step on the real small models (e2e: seconds each) ------------------------------------------------------


@pytest.fixture(scope="module")
def pair():
    """(config, data, teacher, student): the smoke federation's data with an 8-tweet public pool, MiniLM-L6 and -L3."""
    overrides = {"data.public_size": 8, "data.max_length": 16, "train.batch_size": 4, "train.micro_batch_size": 2}
    config = preset_config("smoke", overrides)  # micro-batches of 2 accumulate, as on a small device
    data = build_federation_data(config.data)
    teacher = learner_for(config, config.model.teacher, data.num_classes)
    student = learner_for(config, config.model.student, data.num_classes)
    return config, data, teacher, student


def _targets(data) -> tuple[np.ndarray, np.ndarray]:
    ids = np.arange(4)
    return ids, np.random.default_rng(0).dirichlet(np.ones(data.num_classes), size=len(ids)).astype(np.float32)


def _teach(pair, step=teach_step, round_index=1, **train):
    """Round ``round_index`` from the initial states with ``train`` overrides: (result, teacher, student state)."""
    config, data, teacher, student = pair
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, **train))
    config.validate()
    for learner in (teacher, student):
        load_trainable_state(learner.model, learner.init_state)
    ids, probs = _targets(data)
    try:
        result = step(
            teacher, student, data, config, gathered_ids=ids, gathered_probs=probs, round_ids=ids[:2],
            round_index=round_index,
        )  # fmt: skip
        return result, trainable_state(teacher.model), trainable_state(student.model)
    finally:
        for learner in (teacher, student):  # the learners are cached per process: leave them as found
            load_trainable_state(learner.model, learner.init_state)


def _logits_only_teach_step(teacher, student, data, config, *, gathered_ids, gathered_probs, round_ids, round_index):
    """teach_step as it was before the deep terms, verbatim: the reference for weights 0."""
    cfg, seed = config.train, round_seed(config, round_index)
    T, max_len = cfg.temperature, config.data.max_length
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc_all = encode(teacher.tokenizer, data.public_texts(gathered_ids), max_length=max_len)
        teacher_fit = fit(
            teacher.model, enc_all, targets=gathered_probs, epochs=cfg.teacher_epochs, temperature=T,
            lr=cfg.teacher_lr, batch_size=cfg.batch_size, micro_batch_size=cfg.micro_batch_size, seed=seed,
        )  # fmt: skip
        student_ids = np.arange(len(data.public)) if cfg.student_inputs == "pool" else gathered_ids
        texts = data.public_texts(student_ids)
        teacher_logits = predict_logits(teacher.model, encode(teacher.tokenizer, texts, max_length=max_len))
        pos = {int(i): k for k, i in enumerate(student_ids)}
        refined = teacher_logits[[pos[int(i)] for i in round_ids]]
        enc_student = encode(student.tokenizer, texts, max_length=max_len)
        student_fit = fit(
            student.model, enc_student, targets=softmax(teacher_logits, temperature=T), epochs=cfg.student_epochs,
            temperature=T, lr=cfg.lr, batch_size=cfg.batch_size, micro_batch_size=cfg.micro_batch_size, seed=seed + 1,
        )  # fmt: skip
    return SimpleNamespace(refined=refined, teacher_fit=teacher_fit, student_fit=student_fit)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def logits_only(pair):
    return _teach(pair)


@pytest.mark.e2e
@pytest.mark.parametrize("inputs", ["pool", "seen"])
def test_with_the_weights_at_0_the_round_is_the_logits_only_one_bit_for_bit(pair, logits_only, inputs):
    new = _teach(pair, student_inputs=inputs) if inputs == "seen" else logits_only
    old = _teach(pair, step=_logits_only_teach_step, student_inputs=inputs)
    np.testing.assert_array_equal(new[0].refined, old[0].refined)
    assert new[0].student_fit == old[0].student_fit and new[0].teacher_fit == old[0].teacher_fit
    assert _same(new[1], old[1]) and _same(new[2], old[2])
    assert type(new[0].student_fit) is not DeepFitResult


@pytest.mark.e2e
@pytest.mark.parametrize(
    "train, term",
    [
        ({"student_relation_weight": 1.0}, "relation"),
        ({"student_hidden_weight": 1.0, "student_layer_map": "last"}, "hidden"),
        ({"student_attention_weight": 1.0, "student_layer_map": "2,4,6"}, "attention"),
    ],
)
def test_a_deep_term_trains_the_student_deterministically_and_leaves_the_teacher(pair, logits_only, train, term):
    _, _, teacher, student = pair
    first, second = _teach(pair, **train), _teach(pair, **train)
    fitted = first[0].student_fit
    assert isinstance(fitted, DeepFitResult) and set(fitted.terms) == {"kd", term}
    assert fitted.steps == 2 and fitted.examples == 8  # 8 pool inputs, batches of 4
    assert np.isfinite(fitted.mean_loss) and all(np.isfinite(v) and v > 0 for v in fitted.terms.values())
    assert not _same(first[2], student.init_state) and not _same(first[2], logits_only[2])  # the term counts
    assert _same(first[2], second[2]) and first[0].student_fit == second[0].student_fit  # same seed, same bits
    # The teacher trains before the student step and not during it: its state and answer are the logits-only ones.
    assert _same(first[1], logits_only[1])
    np.testing.assert_array_equal(first[0].refined, logits_only[0].refined)
    for learner in (teacher, student):  # the attention term's eager switch and dropout are undone
        assert learner.model.get_base_model().config._attn_implementation == "sdpa"
    assert all(m.p == 0.1 for n, m in student.model.named_modules() if n.endswith("attention.self.dropout"))


@pytest.mark.e2e
def test_a_teacher_with_other_tokens_is_refused_before_anything_trains(pair):
    config, data, teacher, student = pair

    def shifted(texts, **kwargs):  # the teacher's tokenizer, one id off in every input
        out = teacher.tokenizer(texts, **kwargs)
        return {"input_ids": [[i + 1 for i in ids] for ids in out["input_ids"]]}

    other = dataclasses.replace(teacher, name="other-vocab", tokenizer=shifted)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, student_relation_weight=1.0))
    ids, probs = _targets(data)
    load_trainable_state(teacher.model, teacher.init_state)
    load_trainable_state(student.model, student.init_state)
    with pytest.raises(ValueError, match="teacher 'other-vocab' and student 'minilm-l3' tokenise .* differently"):
        teach_step(
            other, student, data, config, gathered_ids=ids, gathered_probs=probs, round_ids=ids[:2],
            round_index=1,
        )  # fmt: skip
    assert _same(trainable_state(teacher.model), teacher.init_state)
    assert _same(trainable_state(student.model), student.init_state)


@pytest.mark.e2e
def test_the_phases_warm_up_on_the_deep_term_alone_and_fine_tune_on_the_logits_alone(pair, logits_only):
    phases = {"student_relation_weight": 1.0, "student_phases": "warmup:1,finetune:1"}  # the smoke preset: 2 rounds
    warmup = _teach(pair, round_index=1, **phases)
    assert isinstance(warmup[0].student_fit, DeepFitResult) and set(warmup[0].student_fit.terms) == {"relation"}
    both = _teach(pair, round_index=1, student_relation_weight=1.0)
    assert set(both[0].student_fit.terms) == {"kd", "relation"} and not _same(warmup[2], both[2])
    # A fine-tune round is the logits-only round, bit for bit (round 2's seed: compared with the same round).
    finetune, plain = _teach(pair, round_index=2, **phases), _teach(pair, round_index=2)
    assert type(finetune[0].student_fit) is not DeepFitResult
    assert _same(finetune[2], plain[2]) and finetune[0].student_fit == plain[0].student_fit
