"""The arithmetic of unlearning: recomputing a round's consensus and the hashes that prove it.

Pure functions over bytes and numpy arrays: no ledger, no network. The hashes are over the
exact bytes the ledger stores, so anyone holding a ledger (or a removed payload) can recompute
them:

* ``payload_sha256``: sha256 of a contribution's wire payload, as received and stored.
* ``consensus_sha256``: sha256 of ``b"NBCS" || N (uint32) || C (uint32) || ids (<i8) || probs (<f4)``,
  the ledger's storage of a round's consensus.
* ``digest_of(hashes)``: sha256 of the sorted hex hashes joined by newlines, one figure for a set.
* ``state_sha256(state)``: sha256 of a model's trainable state (LoRA matrices and head) ``{name: tensor}``:
  ``b"NBST"``, then for each name in sorted order ``len(name) (uint32) || name (UTF-8) || ndim (uint32) ||
  shape (uint32 each) || values (<f4, row-major)``. The same for a state in memory and one loaded from a
  checkpoint's ``.pt``: bit-identical weights, identical hash.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from nebula.common.wire import decode_logits
from nebula.server.aggregation import AggregationRule

CONSENSUS_MAGIC = b"NBCS"
STATE_MAGIC = b"NBST"
SUPPORT_LABEL_COUNTS = "label-counts"
SUPPORT_NONE = "none"


def payload_sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def consensus_sha256(ids: np.ndarray, probs: np.ndarray) -> str:
    """Hash of a consensus as the ledger stores it: ids ``(N,)`` int64, probs ``(N, C)`` float32."""
    p = np.asarray(probs)
    head = CONSENSUS_MAGIC + struct.pack("<II", *p.shape)
    return hashlib.sha256(head + np.asarray(ids).astype("<i8").tobytes() + p.astype("<f4").tobytes()).hexdigest()


def state_sha256(state: Mapping[str, Any]) -> str:
    """Hash of a trainable state (tensors or arrays, on the CPU); see the module docstring."""
    h = hashlib.sha256(STATE_MAGIC)
    for name in sorted(state):
        value = np.ascontiguousarray(np.asarray(state[name]), dtype="<f4")
        raw = name.encode("utf-8")
        h.update(struct.pack("<I", len(raw)) + raw + struct.pack(f"<I{value.ndim}I", value.ndim, *value.shape))
        h.update(value.tobytes())
    return h.hexdigest()


def digest_of(hashes: Iterable[str]) -> str:
    """One sha256 for a set of hex hashes (order-independent)."""
    return hashlib.sha256("\n".join(sorted(hashes)).encode("ascii")).hexdigest()


def support_matrix(
    client_ids: Sequence[str], label_counts: Mapping[str, Sequence[int]]
) -> tuple[np.ndarray | None, str]:
    """Per-client label counts ``(K, C)`` for the rule, or ``(None, "none")`` unless every client has them.

    A rule that uses support (``class-support``, ``class-contrast``) then takes its documented
    ``support=None`` fallback: ledgers written before the ``clients`` table hold no label counts.
    """
    if not client_ids or any(cid not in label_counts for cid in client_ids):
        return None, SUPPORT_NONE
    return np.array([label_counts[cid] for cid in client_ids], dtype=float), SUPPORT_LABEL_COUNTS


def recompute_consensus(
    payloads: Sequence[bytes],
    weights: Sequence[float],
    *,
    ids: np.ndarray,
    num_classes: int,
    rule: AggregationRule,
    temperature: float,
    min_replies: int,
    support: np.ndarray | None = None,
    log_prior: np.ndarray | None = None,
    trust: Sequence[float] | None = None,
) -> np.ndarray | None:
    """A round's consensus from its remaining contributions, as ``server/federation.py`` computes it.

    Parameters
    ----------
    payloads : sequence of K wire payloads (``nebula.common.wire``), each holding exactly ``ids``.
    weights : (K,) the contributions' weights.
    ids : (N,) the round's public-input ids; the result's rows follow this order.
    num_classes : C.
    rule : the round's aggregation rule.
    temperature : T of ``softmax(z / T)``.
    min_replies : below this many contributions the federation does not aggregate a round.
    support : (K, C) label counts, or None.
    log_prior : (C,) the federation's log prior added to the logits (isolated runs), or None.
    trust : (K,) the contributions' reputation factors (runs with ``federation.reputation``), or None.

    Returns
    -------
    np.ndarray (N, C) float32, or None where the federation would not aggregate the round: fewer
    than ``min_replies`` contributions, or all of weight 0 (inference-only nodes hold no data).
    """
    from nebula.server.consensus import round_consensus  # the federation's own rule; imported here as it brings torch

    logits = [decode_logits(p, expected_ids=ids, num_classes=num_classes, legacy=True).logits for p in payloads]
    consensus, _ = round_consensus(
        logits,
        weights,
        rule=rule,
        temperature=temperature,
        min_replies=max(min_replies, 1),
        support=support,
        log_prior=log_prior,
        trust=trust,
    )
    return None if consensus is None else consensus.astype(np.float32)
