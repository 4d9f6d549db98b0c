"""Structured pruning inside ``nebula export --prune``: running it on the merged model, and the record it leaves.

The algorithm (score, plan, prune, recover by distillation from the unpruned model) is
:func:`nebula.learning.prune_distill.prune_and_recover`; the texts it runs on are chosen by the export
(:func:`nebula.deploy.export.export.pruning_texts`). What was done is written into the package as
:data:`RECORD_FILE`: the spec, the plan (indices of the original model's heads, neurons and layers kept), the
parameter counts before and after, the recovery and the distance to the unpruned model. The device never reads
it (the manifest is the runtime's contract); the export report (report.py) and people do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from nebula.client.runtime.errors import ExportError

RECORD_FILE = "pruning-record.json"


def prune_merged(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    spec: str,
    recover_epochs: int,
    lr: float,
    max_length: int,
    seed: int,
    texts_from: str,
    where: str,
) -> dict:
    """Prune the merged ``model`` in place by ``spec`` and recover it on ``texts``; the record (JSON-ready).

    ``texts_from`` says where the texts come from (for the record); ``where`` (the adapter folder) prefixes errors.

    Raises
    ------
    ExportError
        A bad spec, a spec that keeps more layers than the model has, or a model that is not BERT-family.
    """
    from nebula.learning.prune_distill import prune_and_recover
    from nebula.learning.prune_spec import PruneSpec
    from nebula.learning.training import encode

    try:
        parsed = PruneSpec.parse(spec)
        result = prune_and_recover(
            model, encode(tokenizer, texts, max_length=max_length), parsed, recover_epochs=recover_epochs, lr=lr,
            seed=seed,
        )  # fmt: skip
    except ValueError as err:
        raise ExportError(f"{where}: --prune {spec}: {err}") from None
    return {"criterion": "magnitude", "texts_from": texts_from, **result.to_dict()}


def write_record(folder: str | Path, record: dict) -> Path:
    path = Path(folder) / RECORD_FILE
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def read_record(folder: str | Path) -> dict | None:
    """The package's pruning record, None if the export pruned no structure.

    Raises
    ------
    ExportError
        The record exists but is not a JSON object.
    """
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{path}: unreadable pruning record ({err})") from None
    if not isinstance(record, dict):
        raise ExportError(f"{path}: the pruning record is a JSON {type(record).__name__}, not an object")
    return record


def describe(record: dict) -> str:
    """One sentence: what was kept, the sizes and the recovery."""
    kept = record["kept"]
    per_layer = lambda counts: "/".join(str(c) for c in counts) if len(set(counts)) > 1 else str(counts[0])  # noqa: E731
    recovery = (
        f"recovered by {record['recovery_epochs']} epoch(s) of distillation from the unpruned model "
        f"({record['recovery_steps']} step{'s' if record['recovery_steps'] != 1 else ''})"
        if record["recovery_steps"]
        else "not recovered"
    )
    return (
        f"structured pruning {record['spec']} ({record['criterion']} importance on {record['texts']} texts of "
        f"{record['texts_from']}): layers {len(kept['layers'])} of {kept['of_layers']}, heads "
        f"{per_layer(kept['heads_per_layer'])} of {kept['of_heads']} per layer, FFN "
        f"{per_layer(kept['neurons_per_layer'])} of {kept['of_neurons']}; parameters "
        f"{record['parameters_before'] / 1e6:.2f} M -> {record['parameters_after'] / 1e6:.2f} M; {recovery}; "
        f"KL to the unpruned model {record['kl_before']:.4f} -> {record['kl_after']:.4f}"
    )
