"""Per-round metrics as JSON lines: one object per line, flushed and synced as written."""

from __future__ import annotations

import json
import os
from pathlib import Path


class MetricsLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True, default=float) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def compute_seconds(self) -> float | None:
        """The CPU seconds a run's rounds cost the nodes that did them, summed over every round: each client's
        and the teacher node's ``compute_seconds`` (training, answering, checkpoints; evaluation and model
        loading not counted). None when a round's figures lack them (a run from before they were reported)."""
        total = 0.0
        for record in self.read():
            clients = [m.get("compute_seconds") for m in (record.get("clients") or {}).values()]
            teacher = record.get("teacher_compute_seconds")
            if teacher is None or any(c is None for c in clients):
                return None
            total += teacher + sum(clients)
        return total
