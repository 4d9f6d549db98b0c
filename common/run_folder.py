"""A run's folder (``federation.output_dir``): every path in it, named once.

::

    ledger.sqlite                                    contributions, rejections, consensus, targets, requests
    metrics.jsonl                                    one JSON object per round
    tensorboard/                                     the same per round as TensorBoard scalars (federation.tensorboard)
    results.md, results.json, accuracy_bytes.png     the results table and plot (nebula simulate)
    checkpoints/round-NNN/{teacher,student}.pt       the teacher node's trainable states after each taught round
    models/{teacher,global-student}/                 the final adapters (``PeftModel.from_pretrained``)
    clients/<client id>/adapter/                     each client's own adapter (in a deployment: on the device)
    certificates/<request id>.json                   signed unlearning certificates
    unlearning/<request id>/...                      a model-changing unlearning request's states and adapters:
                                                     checkpoints/round-NNN/, {teacher,student}.pt,
                                                     models/{teacher,global-student}/
    unlearning/<request id>/models.json              its certificate's ``models`` field, written last
    unlearning/CURRENT                               id of the request whose states are the run's models now

Everything in a run folder is found relative to it, so a moved or copied folder still resumes.
Paths only: reading and writing the files is the job of the modules that own their content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKPOINT_NAMES = ("teacher", "student")  # a checkpoint folder's files: <name>.pt
ADAPTER_NAMES = ("teacher", "global-student")  # a models folder's adapters: <name>/
CURRENT = "CURRENT"
REQUEST_MANIFEST = "models.json"
_ROUND_PREFIX = "round-"


def round_checkpoint(checkpoints: Path, round_index: int) -> Path:
    """Round ``round_index``'s folder in a checkpoints folder (a run's, a request's or any other): ``round-NNN``."""
    return Path(checkpoints) / f"{_ROUND_PREFIX}{round_index:03d}"


def checkpoint_file(folder: Path, name: str) -> Path:
    """The state file ``<name>.pt`` (``name`` one of CHECKPOINT_NAMES) of a checkpoint folder."""
    return Path(folder) / f"{name}.pt"


def adapter_dirs(models: Path) -> tuple[Path, Path]:
    """``(teacher, global student)`` adapter folders of a models folder (a run's or a request's)."""
    teacher, student = (Path(models) / name for name in ADAPTER_NAMES)
    return teacher, student


def certificate_file(certificates: Path, request_id: str) -> Path:
    """A request's certificate in a certificates folder: ``<request id>.json``."""
    return Path(certificates) / f"{request_id}.json"


class _Under:
    """A read-only path attribute of :class:`RunFolder`: ``relative`` under its root (a property in one line)."""

    def __init__(self, relative: str) -> None:
        self.relative = relative

    def __get__(self, folder: RunFolder | None, owner: type | None = None) -> Any:
        return self if folder is None else folder.root / self.relative


@dataclass(frozen=True)
class RunFolder:
    """The paths of the run folder at ``root``."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    ledger = _Under("ledger.sqlite")
    metrics = _Under("metrics.jsonl")
    tensorboard = _Under("tensorboard")
    results_md = _Under("results.md")
    results_json = _Under("results.json")
    plot = _Under("accuracy_bytes.png")
    certificates = _Under("certificates")

    def certificate(self, request_id: str) -> Path:
        """``certificates/<request id>.json``."""
        return certificate_file(self.certificates, request_id)

    @property
    def models(self) -> Path:
        """Final adapters: ``teacher/`` and ``global-student/``."""
        return self.root / "models"

    @property
    def teacher_adapter(self) -> Path:
        return adapter_dirs(self.models)[0]

    @property
    def student_adapter(self) -> Path:
        """The global student's adapter: ``models/global-student``."""
        return adapter_dirs(self.models)[1]

    checkpoints = _Under("checkpoints")

    def checkpoint(self, round_index: int) -> Path:
        """The teacher node's states after round ``round_index``: ``checkpoints/round-NNN``."""
        return round_checkpoint(self.checkpoints, round_index)

    def checkpoint_rounds(self) -> list[int]:
        """Rounds with a teacher checkpoint on disk, ascending."""
        found = (
            p.name
            for p in self.checkpoints.glob(f"{_ROUND_PREFIX}*")
            if checkpoint_file(p, CHECKPOINT_NAMES[0]).is_file()
        )
        return sorted(int(n.removeprefix(_ROUND_PREFIX)) for n in found if n.removeprefix(_ROUND_PREFIX).isdigit())

    clients = _Under("clients")

    def client_adapter(self, client_id: str) -> Path:
        return self.clients / client_id / "adapter"

    unlearning = _Under("unlearning")

    @property
    def current_pointer(self) -> Path:
        """``unlearning/CURRENT``: names the request whose states are the run's models now."""
        return self.unlearning / CURRENT

    def request_dir(self, request_id: str) -> Path:
        return self.unlearning / request_id

    def request_manifest(self, request_id: str) -> Path:
        return self.request_dir(request_id) / REQUEST_MANIFEST

    def request_checkpoints(self, request_id: str) -> Path:
        """Exact replay's rounds of a request: ``unlearning/<request id>/checkpoints``."""
        return self.request_dir(request_id) / "checkpoints"

    def request_models(self, request_id: str) -> Path:
        """A request's adapters: ``unlearning/<request id>/models/{teacher,global-student}``."""
        return self.request_dir(request_id) / "models"

    def relative(self, path: Path) -> str:
        """``path`` relative to the run folder, as stored in ledgers, manifests and messages."""
        return Path(path).relative_to(self.root).as_posix()

    def finished_request(self, request_id: str) -> dict[str, Any] | None:
        """The ``models.json`` of a request whose models are complete, else None (ValueError if unreadable)."""
        path = self.request_manifest(request_id)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: unreadable ({exc})") from exc

    def current_request(self, run_id: str) -> str | None:
        """The id of the request ``CURRENT`` names, if its models are complete and of run ``run_id``, else None."""
        if not self.current_pointer.is_file():
            return None
        request_id = self.current_pointer.read_text(encoding="utf-8").strip()
        manifest = self.finished_request(request_id)
        return request_id if manifest is not None and manifest.get("run_id") == run_id else None
