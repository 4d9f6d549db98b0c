"""Property tests of the deep distillation losses (learning/deep_losses.py) and the combined step
(learning/deep_distill.py), on toy tensors and tiny random BERTs (2 layers, hidden 32)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nebula.learning.deep_distill import capture_qkv, deep_distill_loss
from nebula.learning.deep_losses import (
    HiddenProjection,
    attention_map_loss,
    attention_relation_loss,
    hidden_state_loss,
    layer_map,
)
from nebula.learning.losses import kd_kl_loss, soft_targets
from nebula.learning.schedule import LossWeights

B, L = 3, 7
MASK = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])  # (B, L)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _hidden(seed: int, layers: int, width: int) -> list[torch.Tensor]:
    g = _gen(seed)
    return [torch.randn(B, L, width, generator=g) for _ in range(layers + 1)]


def _attentions(seed: int, layers: int, heads: int, mask: torch.Tensor = MASK) -> list[torch.Tensor]:
    g = _gen(seed)
    out = []
    for _ in range(layers):
        scores = torch.randn(B, heads, L, L, generator=g) * 2
        scores = scores.masked_fill(~mask[:, None, None, :].bool(), float("-inf"))
        out.append(scores.softmax(-1))  # (B, H, L, L), padded keys 0
    return out


def _qkv(seed: int, layers: int, width: int) -> dict[str, list[torch.Tensor]]:
    g = _gen(seed)
    return {n: [torch.randn(B, L, width, generator=g) for _ in range(layers)] for n in ("query", "key", "value")}


# --- layer map ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_teacher", "n_student", "kind", "expected"),
    [
        (12, 3, "uniform", ((1, 4), (2, 8), (3, 12))),
        (12, 6, "uniform", ((1, 2), (2, 4), (3, 6), (4, 8), (5, 10), (6, 12))),
        (6, 4, "uniform", ((1, 1), (2, 3), (3, 4), (4, 6))),
        (12, 3, "last", ((1, 10), (2, 11), (3, 12))),
        (6, 3, "uniform", ((1, 2), (2, 4), (3, 6))),
        (6, 6, "last", tuple((m, m) for m in range(1, 7))),
        (12, 3, [3, 6, 12], ((1, 3), (2, 6), (3, 12))),
        (12, 3, [(0, 0), (3, 12)], ((0, 0), (3, 12))),
    ],
)
def test_layer_map(n_teacher, n_student, kind, expected):
    assert layer_map(n_teacher, n_student, kind) == expected


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((3, 6, "uniform"), "n_student <= n_teacher"),
        ((12, 3, "middle"), "'uniform', 'last' or a list"),
        ((12, 3, [4, 8]), "one teacher layer per student layer"),
        ((12, 3, [4, 8, 13]), r"\(3, 13\) out of range"),
        ((12, 3, [(1, 4), (1, 8)]), "each student layer at most once"),
        ((0, 3, "uniform"), "must be >= 1"),
    ],
)
def test_layer_map_refuses(args, match):
    with pytest.raises(ValueError, match=match):
        layer_map(*args)


# --- hidden states ---------------------------------------------------------------------------


def test_hidden_zero_for_identical_inputs_and_positive_otherwise():
    mapping = layer_map(4, 2)
    teacher = _hidden(0, 4, 16)
    student = [teacher[0], teacher[2], teacher[4]]  # the mapped layers, exactly
    assert hidden_state_loss(student, teacher, mapping, attention_mask=MASK).item() == 0.0
    assert hidden_state_loss(_hidden(1, 2, 16), teacher, mapping, attention_mask=MASK).item() > 0


def test_hidden_matches_the_equation_and_ignores_padding():
    mapping = ((1, 2), (2, 1))
    s, t = _hidden(0, 2, 8), _hidden(1, 2, 8)
    m = MASK.bool()
    expected = sum(((s[a] - t[b])[m] ** 2).mean() for a, b in mapping) / 2  # mean over real tokens and width
    torch.testing.assert_close(hidden_state_loss(s, t, mapping, attention_mask=MASK), expected)
    noisy = [h.clone() for h in s]
    for h in noisy:
        h[~m] += 100.0  # padding positions change: the loss must not
    torch.testing.assert_close(hidden_state_loss(noisy, t, mapping, attention_mask=MASK), expected)
    assert hidden_state_loss(noisy, t, mapping) > 10 * expected  # without the mask the padding counts


def test_hidden_gradients_flow_only_to_the_student():
    s = [h.requires_grad_() for h in _hidden(0, 2, 8)]
    t = [h.requires_grad_() for h in _hidden(1, 2, 8)]
    hidden_state_loss(s, t, ((1, 1), (2, 2)), attention_mask=MASK).backward()
    assert all(h.grad is None for h in t)
    assert s[1].grad is not None and s[1].grad.abs().sum() > 0
    assert s[1].grad[~MASK.bool()].abs().sum() == 0  # padding gets no gradient
    assert s[0].grad is None  # the embeddings are not mapped


def test_width_mismatch_needs_a_projection():
    s, t = _hidden(0, 2, 8), _hidden(1, 2, 16)
    with pytest.raises(ValueError, match="width 8, teacher layer 2 16: pass a HiddenProjection"):
        hidden_state_loss(s, t, ((1, 2),))
    proj = HiddenProjection(8, 16, 2)
    assert hidden_state_loss(s, t, ((1, 1), (2, 2)), projection=proj, attention_mask=MASK).ndim == 0
    with pytest.raises(ValueError, match="built for 2 layer pairs, the mapping has 1"):
        hidden_state_loss(s, t, ((1, 2),), projection=proj)


def test_projection_shapes_and_sharing():
    per_pair, shared = HiddenProjection(384, 768, 3), HiddenProjection(384, 768, 3, shared=True)
    assert len(per_pair.maps) == 3 and len(shared.maps) == 1
    h = torch.randn(2, 5, 384)
    assert per_pair(h, 2).shape == (2, 5, 768)
    torch.testing.assert_close(shared(h, 0), shared(h, 2))
    with pytest.raises(IndexError, match="pair 3 out of range"):
        per_pair(h, 3)


def test_projection_learns_student_384_to_teacher_768():
    """Teacher states are a fixed linear map of the student's: the projection alone recovers it."""
    g = _gen(0)
    student = [torch.randn(4, 6, 384, generator=g) for _ in range(2)]
    true_map = torch.randn(384, 768, generator=g) / 384**0.5
    teacher = [h @ true_map for h in student]
    torch.manual_seed(0)
    proj = HiddenProjection(384, 768, 1)
    opt = torch.optim.Adam(proj.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = hidden_state_loss(student, teacher, ((1, 1),), projection=proj)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.01 * first


def test_mean_pool_compares_different_tokenisations():
    """Teacher sequence of another length (another tokeniser): token level refuses, pooled compares means."""
    s = _hidden(0, 1, 8)
    t_len = 10
    t = [torch.randn(B, t_len, 8, generator=_gen(1)) for _ in range(2)]
    t_mask = torch.ones(B, t_len, dtype=torch.long)
    with pytest.raises(ValueError, match="use pool='mean'"):
        hidden_state_loss(s, t, ((1, 1),), attention_mask=MASK, teacher_attention_mask=t_mask)
    got = hidden_state_loss(s, t, ((1, 1),), attention_mask=MASK, pool="mean", teacher_attention_mask=t_mask)
    mean_s = (s[1] * MASK[..., None]).sum(1) / MASK.sum(1, keepdim=True)
    torch.testing.assert_close(got, ((mean_s - t[1].mean(1)) ** 2).mean())
    same = [s[0], mean_s[:, None, :]]  # the student's mean as a one-token teacher sequence
    ones = torch.ones(B, 1, dtype=torch.long)
    assert (
        hidden_state_loss(s, same, ((1, 1),), attention_mask=MASK, pool="mean", teacher_attention_mask=ones).item()
        < 1e-12
    )


# --- attention maps --------------------------------------------------------------------------


def test_attention_map_zero_for_identical_and_positive_otherwise():
    t = _attentions(0, 2, 4)
    assert attention_map_loss(t, t, ((1, 1), (2, 2)), attention_mask=MASK).abs().item() < 1e-6
    assert attention_map_loss(_attentions(1, 2, 4), t, ((1, 1), (2, 2)), attention_mask=MASK).item() > 0.01


def test_attention_map_matches_kl_over_real_queries():
    s, t = _attentions(0, 1, 2), _attentions(1, 1, 2)
    kl = (t[0] * (t[0].clamp_min(1e-30).log() - s[0].clamp_min(1e-12).log())).sum(-1)  # (B, H, L)
    expected = kl.mean(1)[MASK.bool()].mean()
    torch.testing.assert_close(attention_map_loss(s, t, ((1, 1),), attention_mask=MASK), expected)


def test_attention_map_gradients_flow_only_to_the_student_and_heads_must_match():
    s = [a.requires_grad_() for a in _attentions(0, 2, 4)]
    t = [a.requires_grad_() for a in _attentions(1, 2, 4)]
    attention_map_loss(s, t, ((1, 2),), attention_mask=MASK).backward()
    assert all(a.grad is None for a in t) and s[0].grad.abs().sum() > 0 and s[1].grad is None
    with pytest.raises(ValueError, match="use attention_relation_loss"):
        attention_map_loss(_attentions(0, 1, 2), _attentions(1, 1, 4), ((1, 1),), attention_mask=MASK)
    with pytest.raises(ValueError, match="out of range"):
        attention_map_loss(s, t, ((0, 0),), attention_mask=MASK)  # the embeddings have no attention


# --- attention relations ---------------------------------------------------------------------


def test_relation_zero_for_identical_inputs():
    q = _qkv(0, 2, 16)
    loss = attention_relation_loss(q, q, ((1, 1), (2, 2)), attention_mask=MASK, relation_heads=4)
    assert loss.abs().item() < 1e-6


def test_relation_works_across_widths_and_head_counts():
    """Student width 8, teacher width 24: relations are L x L on both sides; a student whose states are a
    per-relation-head orthogonal rotation of the teacher's has the same relations: zero loss."""
    t = _qkv(0, 2, 24)
    heads = 4
    assert attention_relation_loss(_qkv(1, 1, 8), t, ((1, 2),), attention_mask=MASK, relation_heads=heads).item() > 0

    # Same relation with another width: X_a Y_a^T is unchanged by a rotation within each relation head,
    # so padding each head of the teacher's with zeros (d_r 6 -> 9) scaled by sqrt(9/6) gives equal scores.
    def widen(x):  # (B, L, 24) -> (B, L, 36)
        parts = x.reshape(B, L, heads, 6)
        return torch.cat([parts, torch.zeros(B, L, heads, 3)], -1).reshape(B, L, 36) * (9 / 6) ** 0.25

    wide = {k: [widen(x) for x in v] for k, v in t.items()}
    assert (
        attention_relation_loss(wide, t, ((1, 1), (2, 2)), attention_mask=MASK, relation_heads=heads).abs().item()
        < 1e-5
    )
    with pytest.raises(ValueError, match="relation_heads=5 must divide"):
        attention_relation_loss(wide, t, ((1, 1),), attention_mask=MASK, relation_heads=5)


def test_relation_matches_its_equation_for_the_value_relation():
    s, t, heads = _qkv(0, 1, 8), _qkv(1, 1, 12), 2
    key_mask = MASK[:, None, None, :].bool()

    def rel(x):
        xa = x.reshape(B, L, heads, -1).transpose(1, 2)  # (B, A, L, d_r)
        scores = (xa @ xa.transpose(-1, -2)) / xa.shape[-1] ** 0.5
        return scores.masked_fill(~key_mask, float("-inf")).softmax(-1)

    rs, rt = rel(s["value"][0]), rel(t["value"][0])
    kl = (torch.xlogy(rt, rt) - rt * rs.clamp_min(1e-30).log()).sum(-1)  # (B, A, L)
    expected = kl.mean(1)[MASK.bool()].mean()
    got = attention_relation_loss(
        s, t, ((1, 1),), attention_mask=MASK, relation_heads=heads, relations=[("value", "value")]
    )
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_relation_gradients_flow_only_to_the_student_and_masking():
    s = {k: [x.requires_grad_() for x in v] for k, v in _qkv(0, 1, 8).items()}
    t = {k: [x.requires_grad_() for x in v] for k, v in _qkv(1, 1, 16).items()}
    attention_relation_loss(s, t, ((1, 1),), attention_mask=MASK, relation_heads=2).backward()
    assert all(x.grad is None for v in t.values() for x in v)
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for v in s.values() for x in v)
    assert s["value"][0].grad[~MASK.bool()].abs().sum() == 0  # padded tokens neither query nor key
    with pytest.raises(ValueError, match="no 'value'"):
        attention_relation_loss({"query": s["query"]}, t, ((1, 1),), relation_heads=2, relations=[("value", "value")])


# --- tiny BERT models ------------------------------------------------------------------------


def _bert(seed: int, *, layers: int, hidden: int, heads: int, labels: int = 3):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        num_labels=labels,
        attention_probs_dropout_prob=0.0,
        hidden_dropout_prob=0.0,
        attn_implementation="eager",
    )
    return BertForSequenceClassification(config)


def _batch():
    ids = torch.randint(1, 50, (B, L), generator=_gen(7))
    return ids * MASK, MASK


def _run(model, qkv: bool = False):
    ids, mask = _batch()
    with capture_qkv(model) as states:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    return out, {k: list(v) for k, v in states.items()} if qkv else None


def test_capture_qkv_records_each_layers_projections():
    model = _bert(0, layers=2, hidden=32, heads=4)
    out, states = _run(model, qkv=True)
    assert [len(v) for v in states.values()] == [2, 2, 2]
    layer = model.bert.encoder.layer[1].attention.self
    torch.testing.assert_close(states["value"][1], layer.value(out.hidden_states[1]))
    _, again = _run(model, qkv=True)  # a second forward pass replaces, not appends
    assert len(again["query"]) == 2
    assert not model.bert.encoder.layer[0].attention.self.query._forward_hooks  # hooks removed


def test_deep_distill_loss_on_tiny_berts_with_different_widths_and_heads():
    teacher = _bert(0, layers=2, hidden=32, heads=4).eval()
    student = _bert(1, layers=1, hidden=16, heads=2)
    mapping = layer_map(2, 1, "last")
    proj = HiddenProjection(16, 32, len(mapping))
    with torch.no_grad():
        t_out, t_qkv = _run(teacher, qkv=True)
    s_out, s_qkv = _run(student, qkv=True)
    weights = LossWeights(kd=1.0, hidden=0.5, relation=2.0)
    loss = deep_distill_loss(
        s_out, t_out, weights=weights, mapping=mapping, projection=proj, temperature=2.0,
        attention_mask=MASK, student_qkv=s_qkv, teacher_qkv=t_qkv, relation_heads=4,
    )  # fmt: skip
    assert set(loss.terms) == {"kd", "hidden", "relation"}
    kd = kd_kl_loss(s_out.logits, soft_targets(t_out.logits, temperature=2.0), temperature=2.0).item()
    assert loss.terms["kd"] == pytest.approx(kd)
    expected = kd + 0.5 * loss.terms["hidden"] + 2.0 * loss.terms["relation"]
    assert loss.total.item() == pytest.approx(expected, rel=1e-5)
    loss.total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert proj.maps[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="use attention_relation_loss"):
        deep_distill_loss(s_out, t_out, weights=LossWeights(attention=1.0), mapping=mapping, temperature=1.0)


def test_deep_distill_loss_zero_for_a_student_identical_to_its_teacher():
    teacher, student = _bert(0, layers=2, hidden=32, heads=4).eval(), _bert(0, layers=2, hidden=32, heads=4)
    t_out, t_qkv = _run(teacher, qkv=True)
    s_out, s_qkv = _run(student, qkv=True)
    weights = LossWeights(kd=1.0, hidden=1.0, attention=1.0, relation=1.0)
    loss = deep_distill_loss(
        s_out, t_out, weights=weights, mapping=layer_map(2, 2), temperature=3.0,
        attention_mask=MASK, student_qkv=s_qkv, teacher_qkv=t_qkv, relation_heads=4,
    )  # fmt: skip
    assert set(loss.terms) == {"kd", "hidden", "attention", "relation"}
    assert abs(loss.total.item()) < 1e-5


def test_deep_distill_loss_names_missing_inputs():
    model = _bert(0, layers=1, hidden=16, heads=2)
    ids, mask = _batch()
    out = model(input_ids=ids, attention_mask=mask)  # no hidden states
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        deep_distill_loss(out, out, weights=LossWeights(hidden=1.0), mapping=((1, 1),), temperature=1.0)
    with pytest.raises(ValueError, match="no labels"):
        deep_distill_loss(out, out, weights=LossWeights(ce=1.0), mapping=((1, 1),), temperature=1.0)
    with pytest.raises(ValueError, match="capture_qkv"):
        deep_distill_loss(out, out, weights=LossWeights(relation=1.0), mapping=((1, 1),), temperature=1.0)
    labels = torch.tensor([0, 1, 2])
    ce = deep_distill_loss(
        out, out, weights=LossWeights(kd=0.0, ce=1.0), mapping=((1, 1),), temperature=1.0, labels=labels
    )
    torch.testing.assert_close(ce.total, F.cross_entropy(out.logits, labels))


def test_deep_distill_loss_pools_hidden_states_for_a_teacher_with_another_tokeniser():
    """hidden_pool="mean": the teacher's sequence may have another length; the term is the pooled hidden loss."""
    student = _bert(1, layers=1, hidden=16, heads=2)
    s_out, _ = _run(student)
    t_len = 5  # the teacher tokenised the same texts into 5 tokens
    t_hidden = [torch.randn(B, t_len, 32, generator=_gen(2)) for _ in range(3)]
    t_mask = torch.ones(B, t_len, dtype=torch.long)
    t_out = type(s_out)(logits=torch.randn(B, 3, generator=_gen(3)), hidden_states=tuple(t_hidden))
    proj = HiddenProjection(16, 32, 1)
    args = dict(weights=LossWeights(kd=1.0, hidden=1.0), mapping=((1, 2),), projection=proj, temperature=1.0)
    with pytest.raises(ValueError, match="pool='mean'"):
        deep_distill_loss(s_out, t_out, attention_mask=MASK, **args)
    loss = deep_distill_loss(
        s_out, t_out, attention_mask=MASK, hidden_pool="mean", teacher_attention_mask=t_mask, **args
    )
    pooled = hidden_state_loss(
        s_out.hidden_states, t_hidden, ((1, 2),), projection=proj, attention_mask=MASK, pool="mean",
        teacher_attention_mask=t_mask,
    )  # fmt: skip
    assert loss.terms["hidden"] == pytest.approx(pooled.item())


def test_query_key_relation_with_one_relation_head_per_attention_head_is_the_attention_map_loss():
    """MiniLM v1's attention transfer is the Q-K relation at A_r = H: the two paths agree on tiny BERTs."""
    teacher, student = _bert(0, layers=2, hidden=32, heads=4).eval(), _bert(1, layers=2, hidden=32, heads=4)
    (t_out, t_qkv), (s_out, s_qkv) = _run(teacher, qkv=True), _run(student, qkv=True)
    mapping = layer_map(2, 2)
    from_maps = attention_map_loss(s_out.attentions, t_out.attentions, mapping, attention_mask=MASK)
    from_qk = attention_relation_loss(
        s_qkv, t_qkv, mapping, attention_mask=MASK, relation_heads=4, relations=[("query", "key")]
    )
    assert from_maps.item() > 0
    torch.testing.assert_close(from_qk, from_maps, rtol=1e-4, atol=1e-6)


def test_capture_qkv_finds_mpnets_projections():
    """The MPNet teacher names its linears q / k / v: relations from an MPNet teacher to a BERT student."""
    from transformers import MPNetConfig, MPNetForSequenceClassification

    torch.manual_seed(0)
    sizes = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    teacher = MPNetForSequenceClassification(MPNetConfig(**sizes, num_labels=3)).eval()
    (_, t_qkv), (_, s_qkv) = _run(teacher, qkv=True), _run(_bert(1, layers=1, hidden=16, heads=2), qkv=True)
    assert [len(v) for v in t_qkv.values()] == [2, 2, 2]
    ids, _ = _batch()
    embedded = teacher.mpnet.embeddings(input_ids=ids)
    torch.testing.assert_close(t_qkv["key"][0], teacher.mpnet.encoder.layer[0].attention.attn.k(embedded))
    loss = attention_relation_loss(s_qkv, t_qkv, layer_map(2, 1), attention_mask=MASK, relation_heads=4)
    assert torch.isfinite(loss) and loss > 0
