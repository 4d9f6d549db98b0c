"""Each round's metrics as TensorBoard scalars in the run folder (``federation.tensorboard``, off by default).

Why TensorBoard and not MLflow: MLflow tracks into a server backed by an SQL store and brings many
dependencies into the process that logs; TensorBoard's event files are plain files that live in the run
folder (``<output_dir>/tensorboard``), move and copy with it, and are read with
``tensorboard --logdir runs/``. The writer here uses the ``tensorboard`` package's own event format code
(protobufs and the record framing, ``pip install 'nebula-fd[tracking]'``), which needs neither TensorFlow
nor torch, so the ServerApp process stays torch-free (tensorboardX would import torch wherever it is
installed). The package is imported only when tracking is on.

:func:`round_scalars` picks the scalars from a round's summary (``RoundReport.summary`` in
server/federation.py); :class:`TensorBoardLog` appends them as one event a round, synced as written,
like metrics.jsonl (server/metrics_log.py).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nebula.common.config import ConfigError

# TensorBoard tag -> key of a round's summary. A key whose value is None (a round that was not
# aggregated has no teacher accuracy) writes nothing for that round.
ROUND_SCALARS: dict[str, str] = {
    "accuracy/teacher": "teacher_acc",
    "accuracy/global_student": "student_acc",
    "accuracy/clients_mean": "mean_client_acc",
    "accuracy/clients_min": "min_client_acc",
    "accuracy/clients_mean_own": "mean_client_acc_own",
    "f1/teacher": "teacher_f1",
    "f1/global_student": "student_f1",
    "f1/clients_mean": "mean_client_f1",
    "replies/accepted": "accepted",
    "teacher/ok": "teacher_ok",
    "bytes/up_per_client": "bytes_up_per_client",
    "bytes/down_per_client": "bytes_down_per_client",
    "seconds/round": "seconds",
    "seconds/clients_wait": "clients_wait_seconds",
    "seconds/teacher_wait": "teacher_wait_seconds",
    "seconds/teacher": "teacher_seconds",
}
_EXTRA = "pip install 'nebula-fd[tracking]'"


def round_scalars(summary: Mapping[str, Any]) -> dict[str, float]:
    """``{tag: value}`` of one round's summary: the :data:`ROUND_SCALARS`, the number of rejected
    replies, and each client's numeric metrics as ``clients/<client id>/<metric>``."""
    scalars = {tag: float(summary[key]) for tag, key in ROUND_SCALARS.items() if summary.get(key) is not None}
    scalars["replies/rejected"] = float(len(summary.get("rejected") or {}))
    for client, metrics in sorted((summary.get("clients") or {}).items()):
        for name, value in sorted(metrics.items()):
            if isinstance(value, int | float):
                scalars[f"clients/{client}/{name}"] = float(value)
    return scalars


def _tensorboard() -> tuple[Any, Any, Any]:
    """TensorBoard's ``Event`` and ``Summary`` protobufs and its ``RecordWriter``; a clear error without them."""
    try:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError as exc:
        raise ConfigError(
            f"federation.tensorboard is on but the tensorboard package cannot be imported ({exc}): {_EXTRA}"
        ) from exc
    return Event, Summary, RecordWriter


class TensorBoardLog:
    """One TensorBoard event file in ``folder``, one event a round (step = the round's index).

    A run resumed after a restart starts a new file beside the old ones; TensorBoard reads them together.
    Raises :class:`~nebula.common.config.ConfigError` naming the extra to install if ``tensorboard`` is missing.
    """

    def __init__(self, folder: str | Path) -> None:
        self._event, self._summary, self._record_writer = _tensorboard()
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        # TensorBoard finds event files by "tfevents" in the name; the suffix keeps two writers apart.
        stamp = f"{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.path = self.folder / f"events.out.tfevents.{stamp}"
        self._append(self._event(wall_time=time.time(), file_version="brain.Event:2"))

    def write(self, summary: Mapping[str, Any]) -> dict[str, float]:
        """Append the round ``summary["round"]``'s scalars (:func:`round_scalars`); returns what was written."""
        scalars = round_scalars(summary)
        values = [self._summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]
        event = self._event(wall_time=time.time(), step=int(summary["round"]), summary=self._summary(value=values))
        self._append(event)
        return scalars

    def _append(self, event: Any) -> None:
        # Opened per event, like metrics.jsonl: nothing stays open when a run stops or fails.
        with self.path.open("ab") as f:
            self._record_writer(f).write(event.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
