"""Deep distillation losses: matching a teacher's intermediate layers, not only its logits.

Three families, each a pure function of tensors (the logit-level KL and CE are in :mod:`nebula.learning.losses`):

- hidden states (TinyBERT, Jiao et al. 2020, eq. 7): MSE between mapped layers' hidden states, the
  student's projected to the teacher's width by a learned :class:`HiddenProjection` where they differ;
- attention maps (TinyBERT eq. 6, MiniLM v1 eq. 5 in KL form): KL between the attention distributions
  of mapped layers, where both have the same number of heads;
- self-attention relations (MiniLM v2, Wang et al. 2021, eq. 8-10): KL between relation distributions
  ``softmax(X X^T / sqrt(d_r))`` of queries, keys or values split into a chosen number of *relation*
  heads, so teacher and student may have different head counts and widths.

Conventions
-----------
Shapes: ``B`` examples, ``L`` tokens, ``d_s`` / ``d_t`` student / teacher widths, ``H`` attention heads.
Layers are numbered from 1 (the first transformer layer) to ``M`` (student) or ``N`` (teacher); 0 is the
embedding output. A :data:`LayerMap` is a tuple of ``(student layer, teacher layer)`` pairs. Where a loss
reads a ``transformers`` output: ``hidden_states[k]`` is layer ``k``'s output (index 0 the embeddings),
``attentions[k - 1]`` is layer ``k``'s attention, and the per-layer queries, keys and values of
:func:`nebula.learning.deep_distill.capture_qkv` hold layer ``k`` at index ``k - 1``.

Token-level terms compare position ``l`` of the student with position ``l`` of the teacher, so they need
both models to tokenise alike (same vocabulary: MiniLM-L6 -> MiniLM-L3); the shapes are checked. Across
tokenisers (MPNet -> MiniLM) only ``hidden_state_loss(..., pool="mean")`` applies.

The teacher's tensors are detached inside every loss: gradients flow to the student (and the projection) only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LayerMap = tuple[tuple[int, int], ...]  # ((student layer, teacher layer), ...), layers numbered from 1


def layer_map(
    n_teacher: int, n_student: int, kind: str | Sequence[int] | Sequence[tuple[int, int]] = "uniform"
) -> LayerMap:
    """Which teacher layer each student layer learns from.

    - ``"uniform"`` (TinyBERT's ``g(m) = m N / M``, rounded down): student layer ``m`` <- teacher layer
      ``floor(m N / M)``, so the last layers meet (12 -> 3: 4, 8, 12);
    - ``"last"``: the student's ``M`` layers <- the teacher's last ``M`` (12 -> 3: 10, 11, 12);
    - a sequence of ``M`` ints: the teacher layer of each student layer 1..M in order;
    - a sequence of ``(student, teacher)`` pairs: exactly those (layer 0, the embeddings, allowed).

    Returns
    -------
    LayerMap
        ``((m, n), ...)``; every ``m`` in ``[0, M]``, every ``n`` in ``[0, N]``, no student layer twice.
    """
    if n_teacher < 1 or n_student < 1:
        raise ValueError(f"layer counts must be >= 1, got n_teacher={n_teacher}, n_student={n_student}")
    if isinstance(kind, str):
        if kind not in ("uniform", "last"):
            raise ValueError(f"layer map kind must be 'uniform', 'last' or a list, got {kind!r}")
        if n_student > n_teacher:
            raise ValueError(f"a {kind!r} map needs n_student <= n_teacher, got {n_student} > {n_teacher}")
        if kind == "uniform":
            return tuple((m, m * n_teacher // n_student) for m in range(1, n_student + 1))
        return tuple((m, n_teacher - n_student + m) for m in range(1, n_student + 1))
    items = list(kind)
    if all(isinstance(i, int) for i in items):
        if len(items) != n_student:
            raise ValueError(
                f"an explicit layer map lists one teacher layer per student layer: {n_student}, got {items}"
            )
        pairs = tuple((m, n) for m, n in zip(range(1, n_student + 1), items))
    else:
        pairs = tuple((int(m), int(n)) for m, n in items)
    for m, n in pairs:
        if not (0 <= m <= n_student and 0 <= n <= n_teacher):
            raise ValueError(f"layer pair ({m}, {n}) out of range: student 0..{n_student}, teacher 0..{n_teacher}")
    if len({m for m, _ in pairs}) != len(pairs) or not pairs:
        raise ValueError(f"an explicit layer map needs each student layer at most once and one pair at least: {pairs}")
    return pairs


class HiddenProjection(nn.Module):
    """Learned ``W_h`` of TinyBERT eq. 7: the student's hidden states ``(B, L, d_s)`` -> ``(B, L, d_t)``.

    One ``nn.Linear(d_s, d_t)`` per mapped layer pair, or one for all (``shared=True``). It trains with the
    student (add its parameters to the student's optimizer) and is dropped afterwards: it never leaves the
    node that distils.
    """

    def __init__(self, student_width: int, teacher_width: int, n_pairs: int, *, shared: bool = False) -> None:
        super().__init__()
        if min(student_width, teacher_width, n_pairs) < 1:
            raise ValueError(f"widths and n_pairs must be >= 1, got {student_width}, {teacher_width}, {n_pairs}")
        self.student_width, self.teacher_width, self.n_pairs = student_width, teacher_width, n_pairs
        self.maps = nn.ModuleList(nn.Linear(student_width, teacher_width) for _ in range(1 if shared else n_pairs))

    def forward(self, hidden: torch.Tensor, pair: int) -> torch.Tensor:
        """``hidden`` (B, L, d_s) of the ``pair``-th layer pair -> (B, L, d_t)."""
        if not 0 <= pair < self.n_pairs:
            raise IndexError(f"pair {pair} out of range for a projection of {self.n_pairs} layer pairs")
        return self.maps[0 if len(self.maps) == 1 else pair](hidden)


def hidden_state_loss(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    mapping: LayerMap,
    *,
    projection: HiddenProjection | None = None,
    attention_mask: torch.Tensor | None = None,
    pool: str = "tokens",
    teacher_attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error between mapped hidden states (TinyBERT eq. 7), padding excluded.

    .. math::

        L_{hidn} = \\frac{1}{|\\mathcal{M}|} \\sum_{(m, n) \\in \\mathcal{M}} \\frac{1}{|T| \\, d_t}
                   \\sum_{(b, l) \\in T} \\lVert H^S_m[b, l] \\, W_m - H^T_n[b, l] \\rVert^2

    ``T`` the real tokens (``attention_mask == 1``), ``W_m`` the projection (identity without one).
    With ``pool="mean"`` each side is first mean-pooled over its own real tokens, ``(B, L, d) -> (B, d)``,
    and ``T`` is the batch: this compares models whose tokenisers differ (pass ``teacher_attention_mask``).

    Parameters
    ----------
    student_hidden, teacher_hidden : sequences of torch.Tensor, each (B, L, d_s) / (B, L', d_t)
        ``output_hidden_states=True`` outputs; index ``k`` is layer ``k``'s output.
    mapping : LayerMap
    projection : HiddenProjection, optional
        Needed where ``d_s != d_t``; one map per pair of ``mapping``, in order.
    attention_mask : torch.Tensor, shape (B, L), optional
        1 for real tokens; default all ones. Also the teacher's, unless ``teacher_attention_mask`` is given.
    pool : {"tokens", "mean"}
    teacher_attention_mask : torch.Tensor, shape (B, L'), optional

    Returns
    -------
    torch.Tensor, scalar
    """
    if pool not in ("tokens", "mean"):
        raise ValueError(f"pool must be 'tokens' or 'mean', got {pool!r}")
    _check_pairs(mapping, student_hidden, teacher_hidden, offset=0, what="hidden_states")
    if projection is not None and projection.n_pairs != len(mapping):
        raise ValueError(
            f"the projection was built for {projection.n_pairs} layer pairs, the mapping has {len(mapping)}"
        )
    terms = []
    for k, (m, n) in enumerate(mapping):
        hs, ht = student_hidden[m], teacher_hidden[n].detach()  # (B, L, d_s), (B, L', d_t)
        if projection is not None:
            hs = projection(hs, k)  # (B, L, d_t)
        if hs.shape[-1] != ht.shape[-1]:
            raise ValueError(
                f"student layer {m} has width {hs.shape[-1]}, teacher layer {n} {ht.shape[-1]}: "
                "pass a HiddenProjection(student_width, teacher_width, len(mapping))"
            )
        s_mask = _mask(attention_mask, hs)
        if pool == "mean":
            t_mask = _mask(teacher_attention_mask if teacher_attention_mask is not None else attention_mask, ht)
            hs, ht, s_mask = _mean_pool(hs, s_mask), _mean_pool(ht, t_mask), None  # (B, d_t) each
        elif hs.shape != ht.shape:
            raise ValueError(
                f"token-level hidden-state loss needs equal shapes, got student layer {m} {tuple(hs.shape)} and "
                f"teacher layer {n} {tuple(ht.shape)}; use pool='mean' for models with different tokenisers"
            )
        sq = (hs - ht.to(hs.dtype)).pow(2).mean(-1)  # (B, L) or (B,)
        terms.append(sq.mean() if s_mask is None else _masked_mean(sq, s_mask))
    return torch.stack(terms).mean()


def attention_map_loss(
    student_attentions: Sequence[torch.Tensor],
    teacher_attentions: Sequence[torch.Tensor],
    mapping: LayerMap,
    *,
    attention_mask: torch.Tensor | None = None,
    eps: float = 1e-12,
) -> torch.Tensor:
    """KL between the teacher's and the student's attention distributions of mapped layers (MiniLM v1 eq. 5;
    TinyBERT eq. 6 matches the same maps with MSE).

    .. math::

        L_{attn} = \\frac{1}{|\\mathcal{M}|} \\sum_{(m, n) \\in \\mathcal{M}} \\frac{1}{H \\, |T|}
                   \\sum_{h} \\sum_{(b, l) \\in T}
                   \\mathrm{KL}\\left(A^T_{n}[b, h, l, :] \\,\\|\\, A^S_{m}[b, h, l, :]\\right)

    Each row ``A[b, h, l, :]`` is a query's distribution over keys (padded keys hold 0); ``T`` the real
    query tokens. Student probabilities are floored at ``eps`` before the log. ``transformers`` returns
    the maps after attention dropout: distil with ``attention_probs_dropout_prob=0`` (or in eval mode),
    and load the models with ``attn_implementation="eager"``, the implementation that returns them.

    Parameters
    ----------
    student_attentions, teacher_attentions : sequences of torch.Tensor, each (B, H, L, L)
        ``output_attentions=True`` outputs; index ``k - 1`` is layer ``k``. Same ``H`` and ``L`` on both
        sides (else use :func:`attention_relation_loss`).
    mapping : LayerMap
        Layers from 1 (layer 0, the embeddings, has no attention).
    attention_mask : torch.Tensor, shape (B, L), optional

    Returns
    -------
    torch.Tensor, scalar
    """
    _check_pairs(mapping, student_attentions, teacher_attentions, offset=1, what="attentions")
    terms = []
    for m, n in mapping:
        a_s, a_t = student_attentions[m - 1], teacher_attentions[n - 1].detach()  # (B, H, L, L) each
        if a_s.shape != a_t.shape:
            raise ValueError(
                f"attention maps of student layer {m} {tuple(a_s.shape)} and teacher layer {n} {tuple(a_t.shape)} "
                "differ (heads or tokens); use attention_relation_loss across head counts"
            )
        a_t = a_t.to(a_s.dtype)
        kl = (torch.xlogy(a_t, a_t) - a_t * a_s.clamp_min(eps).log()).sum(-1)  # (B, H, L)
        terms.append(_masked_mean(kl.mean(1), _mask(attention_mask, a_s[:, 0])))  # (B, L) -> scalar
    return torch.stack(terms).mean()


def attention_relation_loss(
    student_states: dict[str, Sequence[torch.Tensor]],
    teacher_states: dict[str, Sequence[torch.Tensor]],
    mapping: LayerMap,
    *,
    attention_mask: torch.Tensor | None = None,
    relation_heads: int,
    relations: Sequence[tuple[str, str]] = (("query", "query"), ("key", "key"), ("value", "value")),
) -> torch.Tensor:
    """MiniLM v2's multi-head self-attention relation distillation (Wang et al. 2021, eq. 8-10).

    Each state ``X`` (queries, keys or values of a layer, ``(B, L, d)``) is split into ``A_r`` relation
    heads of width ``d_r = d / A_r``, ``(B, A_r, L, d_r)``, and for a relation ``(x, y)``:

    .. math::

        R_{xy}[b, a] = \\mathrm{softmax}\\left(\\frac{X_a Y_a^\\top}{\\sqrt{d_r}}\\right)
                     \\in \\mathbb{R}^{L \\times L},
        \\qquad
        L_{rel} = \\frac{1}{|\\mathcal{M}|} \\sum_{(m, n)} \\sum_{(x, y)} \\frac{1}{A_r |T|}
                  \\sum_{a} \\sum_{(b, l) \\in T}
                  \\mathrm{KL}\\left(R^T_{xy}[b, a, l, :] \\,\\|\\, R^S_{xy}[b, a, l, :]\\right)

    Padded keys are masked out of the softmax, padded queries out of the mean. ``d_r`` differs between
    teacher and student but every relation is ``L x L``, so head counts and widths may differ; only the
    tokens must align. The default relations are MiniLM v2's (Q-Q, K-K, V-V); ``(("query", "key"),
    ("value", "value"))`` is MiniLM v1 (attention distributions with ``A_r = H``, plus value relation).

    Parameters
    ----------
    student_states, teacher_states : dict of str to sequences of torch.Tensor, each (B, L, d_s) / (B, L, d_t)
        ``{"query": [...], "key": [...], "value": [...]}``, layer ``k`` at index ``k - 1``; only the names
        ``relations`` use are needed. Hidden states work too (``hidden_states[1:]``).
    mapping : LayerMap
        Layers from 1.
    attention_mask : torch.Tensor, shape (B, L), optional
    relation_heads : int
        ``A_r``; divides ``d_s`` and ``d_t``.
    relations : sequence of (str, str)

    Returns
    -------
    torch.Tensor, scalar
    """
    if relation_heads < 1:
        raise ValueError(f"relation_heads must be >= 1, got {relation_heads}")
    if not relations:
        raise ValueError("relations must name at least one pair, e.g. ('value', 'value')")
    for name in {x for pair in relations for x in pair}:
        for side, states in (("student", student_states), ("teacher", teacher_states)):
            if name not in states:
                raise ValueError(f"{side} states have no {name!r} (have {sorted(states)}); capture it with capture_qkv")
        _check_pairs(mapping, student_states[name], teacher_states[name], offset=1, what=name)
    terms = []
    for m, n in mapping:
        per_layer = []
        for x, y in relations:
            s_x, s_y = student_states[x][m - 1], student_states[y][m - 1]  # (B, L, d_s) each
            t_x, t_y = teacher_states[x][n - 1], teacher_states[y][n - 1]  # (B, L, d_t) each
            log_s = _log_relation(s_x, s_y, relation_heads, attention_mask)  # (B, A_r, L, L)
            with torch.no_grad():
                log_t = _log_relation(t_x, t_y, relation_heads, attention_mask)  # (B, A_r, L, L)
            if log_s.shape != log_t.shape:
                raise ValueError(
                    f"relation {x}-{y} of student layer {m} {tuple(log_s.shape)} and teacher layer {n} "
                    f"{tuple(log_t.shape)} differ: the tokens must align"
                )
            kl = F.kl_div(log_s, log_t.to(log_s.dtype), reduction="none", log_target=True).sum(-1)  # (B, A_r, L)
            per_layer.append(_masked_mean(kl.mean(1), _mask(attention_mask, kl[:, 0])))
        terms.append(torch.stack(per_layer).sum())
    return torch.stack(terms).mean()


def _log_relation(x: torch.Tensor, y: torch.Tensor, heads: int, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """``log softmax(X_a Y_a^T / sqrt(d_r))`` over unmasked keys: (B, L, d) twice -> (B, A_r, L, L)."""
    b, length, d = x.shape
    if d % heads or y.shape[-1] % heads:
        raise ValueError(f"relation_heads={heads} must divide the state widths, got {d} and {y.shape[-1]}")
    xa = x.reshape(b, length, heads, -1).transpose(1, 2)  # (B, A_r, L, d_r)
    ya = y.reshape(b, y.shape[1], heads, -1).transpose(1, 2)  # (B, A_r, L, d_r)
    scores = xa @ ya.transpose(-1, -2) / math.sqrt(xa.shape[-1])  # (B, A_r, L, L)
    if attention_mask is not None:
        keys = attention_mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, L)
        scores = scores.masked_fill(~keys, torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def _check_pairs(mapping: LayerMap, student: Sequence, teacher: Sequence, *, offset: int, what: str) -> None:
    """Every mapped layer exists on its side: layer ``k`` at index ``k - offset``."""
    if not mapping:
        raise ValueError("mapping is empty: map at least one layer pair (layer_map)")
    for m, n in mapping:
        if not (offset <= m < len(student) + offset and offset <= n < len(teacher) + offset):
            raise ValueError(
                f"layer pair ({m}, {n}) out of range: student {what} cover layers "
                f"{offset}..{len(student) - 1 + offset}, "
                f"teacher {what} {offset}..{len(teacher) - 1 + offset}"
            )


def _mask(attention_mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """(B, L) float mask of real tokens for a tensor whose first two axes are (B, L)."""
    if attention_mask is None:
        return torch.ones(like.shape[:2], dtype=like.dtype, device=like.device)
    if tuple(attention_mask.shape) != tuple(like.shape[:2]):
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {tuple(like.shape[:2])}")
    return attention_mask.to(like.dtype)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B, L) over the entries where ``mask`` (B, L) is 1."""
    count = mask.sum()
    if count.item() == 0:
        raise ValueError("attention_mask has no real token: nothing to compare")
    return (values * mask).sum() / count


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, d), (B, L) -> (B, d): mean over each row's real tokens."""
    counts = mask.sum(1, keepdim=True)  # (B, 1)
    if (counts == 0).any():
        raise ValueError("an example has no real token (attention_mask row of zeros): cannot mean-pool it")
    return (hidden * mask[..., None]).sum(1) / counts
