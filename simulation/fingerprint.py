"""Fingerprint of a finished run: what makes "deterministic rounds" checkable.

Two runs with the same seed and configuration must give the same fingerprint: the ledger's content
digest (``Ledger.content_digest``: contributions, consensus, targets, label counts; no wall-clock times,
node ids or run ids) and the SHA-256 of every checkpoint file (the teacher's and the global student's
state after each round). Exactness claims of unlearning rest on this.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from nebula.common.run_folder import RunFolder
from nebula.server.ledger import Ledger


@dataclass(frozen=True)
class RunFingerprint:
    ledger: str  # Ledger.content_digest of the folder's last run
    checkpoints: dict[str, str]  # checkpoint file, relative to the run folder -> sha256

    def differences(self, other: RunFingerprint) -> list[str]:
        """What differs from ``other``, one line each (empty when the runs are identical)."""
        lines = [] if self.ledger == other.ledger else [f"ledger content {self.ledger[:12]} != {other.ledger[:12]}"]
        for name in sorted(set(self.checkpoints) | set(other.checkpoints)):
            mine, theirs = self.checkpoints.get(name), other.checkpoints.get(name)
            if mine != theirs:
                lines.append(f"{name}: {(mine or 'missing')[:12]} != {(theirs or 'missing')[:12]}")
        return lines


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_fingerprint(folder: str | Path) -> RunFingerprint:
    """The fingerprint of the last run in run folder ``folder``."""
    run = RunFolder(Path(folder))
    ledger = Ledger(run.ledger)
    try:
        runs = ledger.runs()
        if not runs:
            raise ValueError(f"the ledger {run.ledger} holds no run")
        content = ledger.content_digest(runs[-1])
    finally:
        ledger.close()
    files = sorted(p for p in run.checkpoints.rglob("*") if p.is_file()) if run.checkpoints.is_dir() else []
    return RunFingerprint(ledger=content, checkpoints={run.relative(p): _sha256(p) for p in files})
