"""Structured pruning of a BERT-family classifier (MiniLM): fewer attention heads, narrower FFNs, fewer layers.

1. :func:`importance` scores every head and every FFN neuron on a batch:

   - ``magnitude`` (no labels): head ``h`` by the mean norm over real tokens of its contribution to the
     layer's output, ``|| ctx_h W_O[:, h] ||`` (``ctx_h`` the head's context vectors, ``W_O`` the attention
     output projection); FFN neuron ``i`` by ``mean |a_i| * || W_2[:, i] ||`` (``a`` the activations after
     GELU, ``W_2`` the FFN output projection);
   - ``taylor`` (labels given; Michel et al. 2019, eq. 2; Molchanov et al. 2019): the first-order change of the
     cross-entropy when the unit is removed, ``E_b | sum_l <x_u[b, l], dL/dx_u[b, l]> |`` with ``x_u`` the
     unit's output (a head's context slice, a neuron's activation), real tokens only.

2. :func:`plan_pruning` keeps the best heads and neurons of each layer and the layers asked for, as a
   :class:`PruningPlan` (indices of the *original* model, JSON-serialisable); :func:`plan_for` does the same
   from a :class:`~nebula.learning.prune_spec.PruneSpec` (``heads:0.5,ffn:0.5,layers:2``: fractions kept per
   layer, bottom layers kept).
3. :func:`prune` applies a plan in place: the rows of the query / key / value linears and the columns of the
   attention output for the dropped heads, the rows of the FFN's first linear and the columns of its second
   for the dropped neurons, then the dropped layers. A head keeps its width, so the attention code works
   unchanged with fewer heads.

Per-layer head counts and FFN widths are not expressible in a ``BertConfig``: :func:`save_pruned` writes the
plan beside the weights and :func:`load_pruned` rebuilds the model from both. Prune the *merged* model (LoRA
folded in: deploy/export/merge.py), then export it as any other (deploy/export/onnx_export.py);
learning/prune_distill.py scores on many texts, prunes and recovers by distillation, as ``nebula export --prune``
does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from nebula.learning.prune_spec import PruneSpec

PLAN_FILE = "pruning.json"


@dataclass(frozen=True)
class Importance:
    heads: torch.Tensor  # (layers, heads): larger = more important
    neurons: torch.Tensor  # (layers, intermediate)


@dataclass(frozen=True)
class PruningPlan:
    """What to keep, in the original model's indices."""

    original_layers: int
    heads: tuple[tuple[int, ...], ...]  # per original layer: the heads kept
    neurons: tuple[tuple[int, ...], ...]  # per original layer: the FFN neurons kept
    layers: tuple[int, ...]  # the layers kept, in order

    def __post_init__(self) -> None:
        n = self.original_layers
        if len(self.heads) != n or len(self.neurons) != n:
            raise ValueError(f"a plan lists heads and neurons for each of the {n} original layers")
        if (
            not self.layers
            or sorted(set(self.layers)) != list(self.layers)
            or not 0 <= self.layers[0] <= self.layers[-1] < n
        ):
            raise ValueError(f"layers kept must be increasing indices in [0, {n}), at least one: {self.layers}")
        for i in range(n):
            if not self.heads[i] or not self.neurons[i]:
                raise ValueError(f"layer {i} keeps no head or no neuron; drop the layer instead")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        obj = json.loads(text)
        return cls(
            int(obj["original_layers"]),
            tuple(tuple(int(h) for h in hs) for hs in obj["heads"]),
            tuple(tuple(int(u) for u in us) for us in obj["neurons"]),
            tuple(int(i) for i in obj["layers"]),
        )


def bert_layers(model: nn.Module) -> nn.ModuleList:
    """``model``'s ``encoder.layer``, checked to be BERT's layout (query/key/value, intermediate, output)."""
    layers = getattr(getattr(getattr(model, "base_model", model), "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(layers[0].attention, "self"):
        raise ValueError(f"{type(model).__name__} is not a BERT-family encoder: structured pruning supports BERT")
    return layers


def importance(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, labels: torch.Tensor | None = None
) -> Importance:
    """Head and neuron scores of ``model`` on one batch: ``magnitude`` without labels, ``taylor`` with them."""
    layers = bert_layers(model)
    captured: dict[str, list[torch.Tensor]] = {"ctx": [], "act": []}
    hooks = []
    for layer in layers:
        hooks.append(layer.attention.self.register_forward_hook(_keep(captured["ctx"], labels is not None)))
        hooks.append(layer.intermediate.register_forward_hook(_keep(captured["act"], labels is not None)))
    was_training = model.training
    model.eval()
    try:
        with torch.set_grad_enabled(labels is not None):
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, C)
            if labels is not None:
                F.cross_entropy(logits, labels).backward()
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    mask = attention_mask.to(torch.float32)[..., None]  # (B, L, 1)
    heads, neurons = [], []
    for layer, ctx, act in zip(layers, captured["ctx"], captured["act"]):
        n_heads, width = layer.attention.self.num_attention_heads, layer.attention.self.attention_head_size
        if labels is None:
            w_o = layer.attention.output.dense.weight.detach()  # (d, heads * width)
            per_head = ctx.detach().reshape(*ctx.shape[:2], n_heads, width)  # (B, L, H, w)
            contrib = torch.einsum("blhw,dhw->blhd", per_head, w_o.reshape(-1, n_heads, width)).norm(dim=-1)
            heads.append((contrib * mask).sum((0, 1)) / mask.sum())  # (H,)
            w_2 = layer.output.dense.weight.detach().norm(dim=0)  # (I,)
            neurons.append((act.detach().abs() * mask).sum((0, 1)) / mask.sum() * w_2)  # (I,)
        else:
            prod = (ctx * ctx.grad * mask).reshape(*ctx.shape[:2], n_heads, width).sum((1, 3))  # (B, H)
            heads.append(prod.abs().mean(0).detach())
            neurons.append((act * act.grad * mask).sum(1).abs().mean(0).detach())  # (I,)
    if labels is not None:
        model.zero_grad(set_to_none=True)
    return Importance(torch.stack(heads), torch.stack(neurons))


def _keep(store: list[torch.Tensor], grad: bool):
    """Forward hook appending the module's output tensor (the first of a tuple); with ``grad``, its gradient too."""

    def hook(_module: nn.Module, _inputs: tuple, output) -> None:
        out = output[0] if isinstance(output, tuple) else output  # (B, L, d)
        if grad:
            out.retain_grad()
        store.append(out)

    return hook


def plan_pruning(
    scores: Importance, *, keep_heads: int, keep_neurons: int, keep_layers: Sequence[int] | None = None
) -> PruningPlan:
    """Keep the ``keep_heads`` best heads and ``keep_neurons`` best FFN neurons of every layer (indices in
    increasing order), and the layers ``keep_layers`` (default all)."""
    n_layers, n_heads = scores.heads.shape
    width = scores.neurons.shape[1]
    if not (1 <= keep_heads <= n_heads and 1 <= keep_neurons <= width):
        raise ValueError(f"keep 1..{n_heads} heads and 1..{width} neurons per layer, got {keep_heads}, {keep_neurons}")
    return PruningPlan(
        n_layers,
        tuple(_top(scores.heads[i], keep_heads) for i in range(n_layers)),
        tuple(_top(scores.neurons[i], keep_neurons) for i in range(n_layers)),
        tuple(range(n_layers)) if keep_layers is None else tuple(keep_layers),
    )


def plan_for(scores: Importance, spec: PruneSpec) -> PruningPlan:
    """:func:`plan_pruning` with the counts ``spec`` gives for the scored model (:meth:`PruneSpec.counts`)."""
    n_layers, n_heads = scores.heads.shape
    keep_heads, keep_neurons, layers = spec.counts(layers=n_layers, heads=n_heads, neurons=scores.neurons.shape[1])
    return plan_pruning(scores, keep_heads=keep_heads, keep_neurons=keep_neurons, keep_layers=layers)


def _top(scores: torch.Tensor, k: int) -> tuple[int, ...]:
    """The indices of the ``k`` largest of ``scores`` (n,), in increasing order."""
    return tuple(sorted(int(i) for i in torch.topk(scores, k).indices))


@torch.no_grad()
def prune(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Apply ``plan`` to ``model`` in place (see the module docstring); returns ``model``."""
    layers = bert_layers(model)
    if len(layers) != plan.original_layers:
        raise ValueError(f"the plan is for {plan.original_layers} layers, the model has {len(layers)}")
    for layer, heads, neurons in zip(layers, plan.heads, plan.neurons):
        _prune_heads(layer.attention, heads)
        _prune_ffn(layer, neurons)
    kept = nn.ModuleList(layers[i] for i in plan.layers)
    model.base_model.encoder.layer = kept
    model.config.num_hidden_layers = len(kept)
    return model


def _prune_heads(attention: nn.Module, heads: tuple[int, ...]) -> None:
    self_attn = attention.self
    n_heads, width = self_attn.num_attention_heads, self_attn.attention_head_size
    if heads == tuple(range(n_heads)):
        return
    if not all(0 <= h < n_heads for h in heads):
        raise ValueError(f"head indices {heads} out of range for {n_heads} heads")
    index = torch.cat([torch.arange(h * width, (h + 1) * width) for h in heads])  # (kept * width,)
    for name in ("query", "key", "value"):
        setattr(self_attn, name, prune_linear_layer(getattr(self_attn, name), index, dim=0))
    attention.output.dense = prune_linear_layer(attention.output.dense, index, dim=1)
    self_attn.num_attention_heads = len(heads)
    self_attn.all_head_size = len(heads) * width


def _prune_ffn(layer: nn.Module, neurons: tuple[int, ...]) -> None:
    width = layer.intermediate.dense.out_features
    if neurons == tuple(range(width)):
        return
    if not all(0 <= u < width for u in neurons):
        raise ValueError(f"neuron indices out of range for an FFN of width {width}")
    index = torch.tensor(neurons, dtype=torch.long)
    layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, index, dim=0)
    layer.output.dense = prune_linear_layer(layer.output.dense, index, dim=1)


def save_pruned(model: nn.Module, plan: PruningPlan, folder: str | Path) -> Path:
    """``model.save_pretrained(folder)`` plus the plan (:data:`PLAN_FILE`) that :func:`load_pruned` needs."""
    folder = Path(folder)
    model.save_pretrained(folder)
    (folder / PLAN_FILE).write_text(plan.to_json(), encoding="utf-8")
    return folder


def load_pruned(folder: str | Path) -> nn.Module:
    """The model :func:`save_pruned` wrote: built from its config at the original size, pruned by the plan,
    then given the saved weights (every tensor must fit: ``strict`` loading)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = Path(folder)
    plan = PruningPlan.from_json((folder / PLAN_FILE).read_text(encoding="utf-8"))
    config = AutoConfig.from_pretrained(folder)
    config.num_hidden_layers = plan.original_layers
    model = prune(AutoModelForSequenceClassification.from_config(config), plan)
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return model.eval()
