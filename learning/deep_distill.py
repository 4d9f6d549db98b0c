"""One call for a deep-distillation step: the weighted sum of logit and intermediate-layer losses.

.. math::

    L = w_{kd} L_{KD}(s, \\mathrm{softmax}(t / T); T) + w_{ce} \\mathrm{CE}(s, y)
        + w_{hidn} L_{hidn} + w_{attn} L_{attn} + w_{rel} L_{rel}

``L_KD`` and ``CE`` are :mod:`nebula.learning.losses`'s, the other three :mod:`nebula.learning.deep_losses`'s;
the weights come from a :class:`~nebula.learning.schedule.LossWeights` (per phase:
:class:`~nebula.learning.schedule.DistillSchedule`). A term of weight 0 is not computed, so its inputs
(hidden states, attention maps, queries / keys / values) need not exist. Everything runs where the teacher
distils (the server side of the teacher-to-student step): nothing here leaves a device.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nebula.learning.deep_losses import (
    HiddenProjection,
    LayerMap,
    attention_map_loss,
    attention_relation_loss,
    hidden_state_loss,
)
from nebula.learning.losses import kd_kl_loss, soft_targets
from nebula.learning.schedule import LossWeights

# Per-layer query / key / value linears, relative to one encoder layer, by family (BERT and MiniLM; MPNet).
_QKV_PATHS = (
    ("attention.self.query", "attention.self.key", "attention.self.value"),
    ("attention.attn.q", "attention.attn.k", "attention.attn.v"),
)
QKV = ("query", "key", "value")


@dataclass(frozen=True)
class DeepLoss:
    total: torch.Tensor  # scalar, the weighted sum
    terms: dict[str, float]  # each computed term before weighting, for logging


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``encoder.layer`` list of a ``transformers`` encoder (wrapped by PEFT or not)."""
    for name, module in model.named_modules():
        if name.endswith("encoder.layer") and isinstance(module, nn.ModuleList):
            return module
    raise ValueError(f"{type(model).__name__} has no encoder.layer list: not a BERT-like encoder")


@contextmanager
def capture_qkv(model: nn.Module) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record every layer's queries, keys and values during the forward passes inside the block.

    Yields ``{"query": [...], "key": [...], "value": [...]}``: layer ``k``'s ``(B, L, d)`` output of its
    query / key / value linear at index ``k - 1``, before the split into heads (LoRA included, where the
    linear is adapted). The lists are cleared at each forward pass, so they hold the latest one.
    """
    layers = encoder_layers(model)
    paths = next((p for p in _QKV_PATHS if _has(layers[0], p[0])), None)
    if paths is None:
        raise ValueError(f"no query/key/value linears found in {type(layers[0]).__name__}; known: {_QKV_PATHS}")
    states: dict[str, list[torch.Tensor]] = {name: [] for name in QKV}

    def clear(*_) -> None:  # a new forward pass starts at the first layer; None leaves its inputs as they are
        for v in states.values():
            v.clear()

    handles = [layers[0].register_forward_pre_hook(clear)]
    for layer in layers:
        for name, path in zip(QKV, paths):
            handles.append(layer.get_submodule(path).register_forward_hook(_recorder(states[name])))
    try:
        yield states
    finally:
        for handle in handles:
            handle.remove()


def deep_distill_loss(
    student_out,
    teacher_out,
    *,
    weights: LossWeights,
    mapping: LayerMap,
    projection: HiddenProjection | None = None,
    temperature: float,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    student_qkv: dict[str, list[torch.Tensor]] | None = None,
    teacher_qkv: dict[str, list[torch.Tensor]] | None = None,
    relation_heads: int | None = None,
    hidden_pool: str = "tokens",
    teacher_attention_mask: torch.Tensor | None = None,
) -> DeepLoss:
    """The weighted loss of the module docstring for one batch.

    Parameters
    ----------
    student_out, teacher_out : ``transformers`` outputs
        ``.logits`` (B, C); ``.hidden_states`` where ``weights.hidden > 0``, ``.attentions`` where
        ``weights.attention > 0`` (run the models with ``output_hidden_states`` / ``output_attentions``).
    weights : LossWeights
    mapping : LayerMap
        Student layer -> teacher layer, for every intermediate term.
    projection : HiddenProjection, optional
        Where the widths differ (hidden term).
    temperature : float
        ``T`` of the KD term.
    attention_mask : torch.Tensor, shape (B, L), optional
        The batch's, shared by both models (the intermediate terms need one tokenisation), except for the
        hidden term with ``hidden_pool="mean"``, where it is the student's.
    labels : torch.Tensor of int, shape (B,), optional
        Needed where ``weights.ce > 0``.
    student_qkv, teacher_qkv : dicts of :func:`capture_qkv`, optional
        Needed where ``weights.relation > 0``, with ``relation_heads``.
    hidden_pool : {"tokens", "mean"}
        ``pool`` of :func:`~nebula.learning.deep_losses.hidden_state_loss`: ``"mean"`` compares mean-pooled
        hidden states, for a teacher whose tokeniser differs (MPNet -> MiniLM).
    teacher_attention_mask : torch.Tensor, shape (B, L'), optional
        The teacher's own mask where ``hidden_pool="mean"`` (default ``attention_mask``).

    Returns
    -------
    DeepLoss
    """
    terms: dict[str, torch.Tensor] = {}
    s_logits = student_out.logits  # (B, C)
    if weights.kd > 0:
        targets = soft_targets(teacher_out.logits.detach().to(s_logits.dtype), temperature=temperature)  # (B, C)
        terms["kd"] = kd_kl_loss(s_logits, targets, temperature=temperature)
    if weights.ce > 0:
        if labels is None:
            raise ValueError(f"weights.ce is {weights.ce} but no labels were given")
        terms["ce"] = F.cross_entropy(s_logits, labels)
    if weights.hidden > 0:
        s_hidden, t_hidden = _needs(student_out, teacher_out, "hidden_states", "hidden")
        terms["hidden"] = hidden_state_loss(
            s_hidden,
            t_hidden,
            mapping,
            projection=projection,
            attention_mask=attention_mask,
            pool=hidden_pool,
            teacher_attention_mask=teacher_attention_mask,
        )
    if weights.attention > 0:
        s_attn, t_attn = _needs(student_out, teacher_out, "attentions", "attention")
        terms["attention"] = attention_map_loss(s_attn, t_attn, mapping, attention_mask=attention_mask)
    if weights.relation > 0:
        if student_qkv is None or teacher_qkv is None or relation_heads is None:
            raise ValueError(
                f"weights.relation is {weights.relation}: pass student_qkv and teacher_qkv (capture_qkv) "
                "and relation_heads"
            )
        terms["relation"] = attention_relation_loss(
            student_qkv, teacher_qkv, mapping, attention_mask=attention_mask, relation_heads=relation_heads
        )
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return DeepLoss(total, {name: float(value.detach()) for name, value in terms.items()})


def _needs(student_out, teacher_out, field: str, term: str) -> tuple:
    """``field`` of both outputs, or an error naming the forward flag that produces it."""
    pair = getattr(student_out, field, None), getattr(teacher_out, field, None)
    if pair[0] is None or pair[1] is None:
        raise ValueError(f"weights.{term} > 0 needs {field} from both models: run them with output_{field}=True")
    return pair


def _recorder(store: list[torch.Tensor]):
    """A forward hook that appends the module's output, (B, L, d), to ``store``."""

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        store.append(output)

    return hook


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True
