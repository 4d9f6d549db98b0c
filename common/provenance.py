"""Where a result came from: the commit it was measured on, whether the tree had changes, the command.

Every benchmark's JSON (benchmarks/*.py) records these three fields, so a figure can be traced back to the
code and rerun. Git is asked from the repository the code lives in, whatever the working directory; outside
a git checkout (an installed wheel) the commit reads ``"unknown"``.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str, cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def provenance(argv: list[str] | None = None, *, cwd: Path = REPO) -> dict[str, object]:
    """``{"commit", "uncommitted_changes", "command"}`` of this process.

    ``commit`` is the full hash of HEAD (``"unknown"`` outside git); ``uncommitted_changes`` is True when
    tracked files differ from it (untracked files do not count), None when git cannot say; ``command`` is
    ``python`` followed by ``argv`` (default ``sys.argv``), shell-quoted so it pastes back as it ran.
    """
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    return {
        "commit": _git("rev-parse", "HEAD", cwd=cwd) or "unknown",
        "uncommitted_changes": None if status is None else bool(status),
        "command": shlex.join(["python", *(sys.argv if argv is None else argv)]),
    }


class StoredResultMismatch(ValueError):
    """A stored result was made with other settings than this run's: resuming would mix two experiments."""


def stored_result(path: str | Path, settings: dict) -> dict | None:
    """The JSON result at ``path`` for a benchmark to resume (None where there is none yet).

    Raises :class:`StoredResultMismatch` naming each setting that differs, ``{name: (stored, now)}``.
    """
    path = Path(path)
    if not path.exists():
        return None
    stored = json.loads(path.read_text())
    differ = {k: (stored["settings"].get(k), v) for k, v in settings.items() if stored["settings"].get(k) != v}
    if differ:
        raise StoredResultMismatch(f"{path} was made with other settings {differ} (stored, now); use another --out")
    return stored
