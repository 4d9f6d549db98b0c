"""The teacher and global student of a run, as the model-changing modes read and write them.

Files and learners only; the training is :mod:`nebula.learning.distill_step` and the modes' own modules.

A run folder (``federation.output_dir``, the ledger's folder; its paths are
:class:`nebula.common.run_folder.RunFolder`'s) holds::

    checkpoints/round-NNN/{teacher,student}.pt                the federation's, after each taught round; never changed
    unlearning/<request_id>/checkpoints/round-NNN/{...}.pt    exact replay's rounds
    unlearning/<request_id>/{teacher,student}.pt              the trainable states the request ended with
    unlearning/<request_id>/models/{teacher,global-student}/  the same as PEFT adapters (``PeftModel.from_pretrained``)
    unlearning/<request_id>/models.json                       the certificate's ``models`` field, written last
    unlearning/CURRENT                                        id of the request whose states are the run's models now

**Which run.** A run folder's checkpoints belong to the last run started in its ledger (a new run
in the same folder overwrites them), so the model modes act on that run. A client that took no
part in it leaves the models as they are (the certificate says so); earlier runs' models are no
longer on disk.

**Current models.** The states a model mode starts from (fast correction) and reports as "before"
are those of the request ``CURRENT`` names, else the run's last checkpoint. Exact replay restores
the federation's own checkpoint from before the earliest revised round, so a second request does
not inherit a first one's approximation.

**Exactly once.** ``models.json`` is written after every other file of the request and before
``CURRENT``; a resumed request whose ``models.json`` exists reads it back instead of training again
(a killed attempt's partial files are overwritten by the deterministic rerun).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nebula.common.config import ConfigError, NebulaConfig
from nebula.common.run_folder import RunFolder, adapter_dirs
from nebula.server.exceptions import LedgerError, UnlearningError
from nebula.server.ledger import Ledger
from nebula.server.unlearning.arithmetic import state_sha256
from nebula.server.unlearning.base import UnlearnContext


@dataclass(frozen=True)
class RunModels:
    """The run whose models a run folder holds, and the configuration it was started with.

    A thin wrapper over the folder's :class:`RunFolder` (``paths``): the path methods delegate to it."""

    folder: Path
    run_id: str
    config: NebulaConfig
    paths: RunFolder = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))
        object.__setattr__(self, "paths", RunFolder(self.folder))

    def checkpoint(self, round_index: int) -> Path:
        return self.paths.checkpoint(round_index)

    def checkpoint_rounds(self) -> list[int]:
        return self.paths.checkpoint_rounds()

    def request_dir(self, request_id: str) -> Path:
        return self.paths.request_dir(request_id)

    def relative(self, path: Path) -> str:
        return self.paths.relative(path)


def open_run(ctx: UnlearnContext) -> RunModels:
    """The run whose models ``ctx``'s run folder holds: :func:`run_of` its ledger and folder."""
    return run_of(ctx.ledger, ctx.run_folder)


def run_of(ledger: Ledger, folder: Path) -> RunModels:
    """The last run of ``ledger``, with its configuration (Ledger.run_config), whose models are in ``folder``."""
    runs = ledger.runs()
    if not runs:
        raise LedgerError(f"the ledger {ledger.path} holds no run: there are no models to unlearn from")
    run_id = runs[-1]
    try:
        config = NebulaConfig.from_flat(ledger.run_config(run_id))
    except ConfigError as exc:
        raise LedgerError(f"run {run_id}: stored configuration: {exc}") from exc
    return RunModels(Path(folder), run_id, config)


def last_finished_round(ledger: Ledger, run: RunModels) -> int:
    """The last round of ``run`` the ledger holds targets for (0: none): recorded in a request's ``models.json``
    as ``after_round``, so a restarted federation knows whether the request's models are newer than its last
    checkpoint without reading file times (server/live_unlearning.py)."""
    return max(ledger.finished_rounds(run.run_id), default=0)


def affected_rounds(ctx: UnlearnContext, run: RunModels) -> list[int]:
    """Rounds of the run whose consensus no longer is what the teacher learnt from: revised by any
    request, or holding a removed contribution of this client (a purge-only request leaves the
    consensus, but the client did reach the teacher there)."""
    return sorted(
        set(ctx.ledger.revised_rounds(run.run_id)) | set(ctx.ledger.tombstoned_rounds(run.run_id, ctx.client_id))
    )


def load_states(folder: Path) -> tuple[dict, dict]:
    """``(teacher, student)`` trainable states from ``folder/{teacher,student}.pt``."""
    from nebula.learning.models import load_checkpoint

    try:
        return load_checkpoint(folder)
    except (OSError, ValueError) as exc:
        raise UnlearningError(f"cannot read the model states in {folder}: {exc}") from exc


def save_states(folder: Path, teacher: dict, student: dict) -> None:
    """Write both states as TeacherNode.checkpoint does (learning/models.py, ``save_checkpoint``)."""
    from nebula.learning.models import save_checkpoint

    save_checkpoint(folder, teacher, student)


def current_request_dir(run: RunModels) -> Path | None:
    """The folder of the request ``CURRENT`` names, if its models are complete and of this run, else None."""
    try:
        request_id = run.paths.current_request(run.run_id)
    except ValueError as exc:
        raise UnlearningError(str(exc)) from exc
    return None if request_id is None else run.request_dir(request_id)


def current_states(run: RunModels) -> tuple[dict, dict, str]:
    """``(teacher, student, where)``: the run's models now (see the module docstring)."""
    folder = current_request_dir(run)
    if folder is not None:
        return (*load_states(folder), run.relative(folder))
    rounds = run.checkpoint_rounds()
    if not rounds:
        raise UnlearningError(f"{run.paths.checkpoints} holds no round's checkpoint: no models to unlearn from")
    return (*load_states(run.checkpoint(rounds[-1])), run.relative(run.checkpoint(rounds[-1])))


def learners(run: RunModels):
    """``(teacher, student, data)``: the run's learners (this process's cached base models) and data view."""
    from nebula.common.federation_data import build_federation_data
    from nebula.learning.models import learner_for

    data = build_federation_data(run.config.data)
    model = run.config.model
    return (
        learner_for(run.config, model.teacher, data.num_classes),
        learner_for(run.config, model.student, data.num_classes),
        data,
    )


def finished(run: RunModels, request_id: str) -> dict[str, Any] | None:
    """The ``models.json`` of a request whose models are complete, else None."""
    try:
        return run.paths.finished_request(request_id)
    except ValueError as exc:
        raise UnlearningError(str(exc)) from exc


def resume(run: RunModels, request_id: str) -> dict[str, Any] | None:
    """A resumed request's ``models`` field when its models are complete (None: train), with ``CURRENT``
    set as :func:`publish` would have left it (a process killed between the two writes)."""
    manifest = finished(run, request_id)
    if manifest is not None:
        pointer = run.paths.current_pointer
        named = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else ""
        named_manifest, own_manifest = run.paths.request_manifest(named), run.paths.request_manifest(request_id)
        newer = (
            named and named_manifest.is_file() and named_manifest.stat().st_mtime_ns > own_manifest.stat().st_mtime_ns
        )
        if named != request_id and not newer:
            _write_atomic(pointer, request_id + "\n")
    return manifest


def hashes(model: str, before: dict, after: dict) -> dict[str, str]:
    return {"model": model, "before_sha256": state_sha256(before), "after_sha256": state_sha256(after)}


def publish(run: RunModels, request_id: str, teacher, student, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the request's final states, adapters and ``models.json``, then point ``CURRENT`` at it."""
    from nebula.common.federation_data import build_federation_data
    from nebula.learning.models import save_adapter, trainable_state

    folder = run.request_dir(request_id)
    save_states(folder, trainable_state(teacher.model), trainable_state(student.model))
    teacher_dir, student_dir = adapter_dirs(run.paths.request_models(request_id))
    names = build_federation_data(run.config.data).dataset.label_names
    note = f"The state after unlearning request `{request_id}` ({manifest.get('method', 'unlearning')})."
    card = {"label_names": names, "config": run.config, "note": note}
    save_adapter(teacher, teacher_dir, role="teacher", **card)
    save_adapter(student, student_dir, role="global-student", **card)
    _write_atomic(run.paths.request_manifest(request_id), json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    _write_atomic(run.paths.current_pointer, request_id + "\n")
    return manifest


def unchanged(run: RunModels, method: str, client_id: str) -> dict[str, Any]:
    """The ``models`` field when the client took no part in the run whose models are on disk."""
    teacher, student, where = current_states(run)
    return {
        "run_id": run.run_id,
        "method": method,
        "changed": False,
        "before": where,
        "output": where,
        "note": f"{client_id} took no part in run {run.run_id}, whose models this run folder holds: nothing to undo",
        "teacher": hashes(run.config.model.teacher, teacher, teacher),
        "student": hashes(run.config.model.student, student, student),
    }


def exactness(run: RunModels, method: str) -> dict[str, Any]:
    """The certificate's statement of how exact the result is: the run's isolation level and whether the new
    teacher and global student equal those of a federation run from scratch without the client.

    Exact only for ``exact-replay`` on an ``isolated`` run: there no other client's answers carry the client's
    influence (they never received targets or a student), so re-aggregating the ledger and replaying the
    teacher's rounds gives the from-scratch models, bit for bit (tests/simulation/test_isolated_forgetting.py).
    In a ``collaborative`` run the other clients' stored answers were shaped by targets the client influenced.
    """
    isolation = run.config.federation.isolation
    exact = method == "exact-replay" and isolation == "isolated"
    if exact:
        why = "isolated run: the remaining answers never saw the client; the ledger's rounds were replayed"
    elif isolation == "isolated":
        why = f"{method} approximates the retrained models; exact-replay would be exact on this isolated run"
    else:
        why = "collaborative run: the other clients' stored answers digested targets the client shaped"
    return {"isolation": isolation, "exact": exact, "exactness": why}


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
