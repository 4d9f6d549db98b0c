"""The device flywheel: keep what the device predicted, pick the inputs most worth labelling, read the labels back.

1. :class:`PredictionLog` appends one JSON line per prediction to a file on the device: the input text, the
   predicted label, its confidence, the probabilities and a timestamp. Nothing leaves the device.
2. :func:`select` picks ``k`` logged inputs to label:

   - ``uncertainty``: the device model's least confident rows, by margin ``1 - (p_(1) - p_(2))`` (top two
     probabilities) or entropy ``-sum_c p_c log p_c``;
   - ``disagreement``: rows where the device model and the downloaded global student differ: top-1
     disagreement first, then the Jensen-Shannon divergence ``JS(p, q)`` (at most ``log 2`` < 1), i.e. the score
     ``[argmax p != argmax q] + JS(p, q)``;
   - ``diverse``: greedy k-center (farthest-first traversal, Sener & Savarese 2018) on embeddings, or on the
     probability vectors without them, starting from the row farthest from the mean;
   - ``mixed``: a score ``s`` in [0, 1], the mean of uncertainty and (where the global student's
     probabilities are given) disagreement, each divided by its largest possible value; the best row
     first, then each time the row that maximises ``s_i * min_j d(x_i, x_j)`` over those chosen (``d`` as
     for ``diverse``): uncertain, and not ``k`` copies of one confusion;
   - ``typical``: one typical row per region of the embeddings the device's labelled data does not cover yet
     (TypiClust, :mod:`nebula.common.typical`): needs embeddings, and takes those of the labelled rows; the
     strategy for small budgets (the flywheel benchmark, docs/benchmarks.md).

   Repeated texts count once (the first logged).
3. :func:`write_annotation_file` writes the picks as CSV with an empty ``label`` column for a person to fill;
   :func:`read_annotations` reads the filled rows back, checked against the federation's label names, and
   :func:`write_labelled` stores them as a ``text,label`` file that joins the device's own data folder
   (:func:`nebula.common.data.load_labelled_files` reads it) for the next round.

numpy only: this runs on devices next to the ONNX runtime.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nebula.common.data import TextDataset
from nebula.common.typical import TypicalError, typical_select

STRATEGIES = ("uncertainty", "disagreement", "diverse", "mixed", "typical")
ANNOTATION_COLUMNS = ("text", "label", "predicted", "confidence")
_SUM_ATOL = 1e-3  # probabilities logged as JSON floats from float32 rows


class FlywheelError(ValueError):
    """A prediction log, an annotation file or a selection request is malformed; the message names where."""


@dataclass(frozen=True)
class Prediction:
    """One logged prediction: ``label`` is ``argmax(probs)`` and ``confidence`` its probability."""

    text: str
    label: int
    confidence: float
    probs: tuple[float, ...]  # (C,)
    timestamp: float  # seconds since the epoch
    label_name: str | None = None


@dataclass(frozen=True)
class LogContents:
    records: list[Prediction]
    corrupt: list[tuple[int, str]]  # (line number from 1, why): lines skipped by a non-strict read


class PredictionLog:
    """A JSON-lines file of :class:`Prediction` records, appended to and read back.

    Each :meth:`append` is one ``write`` to a file opened with ``O_APPEND``, so records of concurrent
    writers do not interleave within a line; if the file does not end with a newline (a write cut short by
    a crash), a newline is written first, so the broken line stays alone and is reported by :meth:`read`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(
        self,
        texts: Sequence[str],
        probs: np.ndarray,
        *,
        label_names: Sequence[str] | None = None,
        timestamp: float | None = None,
    ) -> int:
        """Log the predictions ``probs`` (N, C) of ``texts`` (N); returns N."""
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[0] != len(texts):
            raise FlywheelError(f"probs must be (N, C) for {len(texts)} texts, got shape {probs.shape}")
        if label_names is not None and len(label_names) != probs.shape[1]:
            raise FlywheelError(f"{len(label_names)} label names for {probs.shape[1]} classes")
        for i, row in enumerate(probs):
            _check_probs(row, where=f"row {i}")
        when = time.time() if timestamp is None else float(timestamp)
        lines = []
        for text, row in zip(texts, probs):
            label = int(row.argmax())
            record = {"text": str(text), "label": label, "confidence": float(row[label])}
            if label_names is not None:
                record["label_name"] = str(label_names[label])
            record |= {"probs": [float(p) for p in row], "timestamp": when}
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            data = "".join(lines).encode("utf-8")
            if self._ends_mid_line():
                data = b"\n" + data
            os.write(fd, data)
        finally:
            os.close(fd)
        return len(lines)

    def read(self, *, strict: bool = True) -> LogContents:
        """Every record in file order; a corrupt line raises :class:`FlywheelError` naming its line number, or,
        with ``strict=False``, is skipped and listed in :attr:`LogContents.corrupt`."""
        records: list[Prediction] = []
        corrupt: list[tuple[int, str]] = []
        classes: int | None = None
        with self.path.open(encoding="utf-8", errors="replace") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = _parse(line, classes)
                except FlywheelError as err:
                    if strict:
                        raise FlywheelError(f"{self.path}:{line_no}: {err}") from None
                    corrupt.append((line_no, str(err)))
                    continue
                classes = len(record.probs)
                records.append(record)
        return LogContents(records, corrupt)

    def _ends_mid_line(self) -> bool:
        size = self.path.stat().st_size
        if size == 0:
            return False
        with self.path.open("rb") as handle:
            handle.seek(size - 1)
            return handle.read(1) != b"\n"


def _parse(line: str, classes: int | None) -> Prediction:
    """One log line as a Prediction; FlywheelError saying what is wrong (the caller adds where)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise FlywheelError(f"not JSON ({err.msg})") from None
    if not isinstance(obj, dict):
        raise FlywheelError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("text", "label", "confidence", "probs", "timestamp") if k not in obj]
    if missing:
        raise FlywheelError(f"missing {missing}")
    text, label, probs = obj["text"], obj["label"], obj["probs"]
    if not isinstance(text, str):
        raise FlywheelError(f"text must be a string, got {type(text).__name__}")
    if not isinstance(probs, list) or not probs or not all(_is_number(p) for p in probs):
        raise FlywheelError("probs must be a non-empty list of numbers")
    if classes is not None and len(probs) != classes:
        raise FlywheelError(f"{len(probs)} probabilities where earlier lines have {classes}")
    _check_probs(np.asarray(probs, dtype=np.float64), where="probs")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(probs):
        raise FlywheelError(f"label must be a class index in [0, {len(probs)}), got {label!r}")
    for key in ("confidence", "timestamp"):
        if not _is_number(obj[key]) or not math.isfinite(obj[key]):
            raise FlywheelError(f"{key} must be a finite number, got {obj[key]!r}")
    name = obj.get("label_name")
    return Prediction(
        text, label, float(obj["confidence"]), tuple(float(p) for p in probs), float(obj["timestamp"]), name
    )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_probs(row: np.ndarray, *, where: str) -> None:
    if not np.isfinite(row).all() or (row < 0).any() or abs(row.sum() - 1.0) > _SUM_ATOL:
        raise FlywheelError(f"{where}: probabilities must be finite, >= 0 and sum to 1, got {row.tolist()}")


# --- selection (pure) -----------------------------------------------------------------------


def uncertainty(probs: np.ndarray, *, measure: str = "margin") -> np.ndarray:
    """(N, C) probabilities -> (N,) scores, higher = less sure: ``1 - (p_(1) - p_(2))`` or the entropy (nats)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise FlywheelError(f"uncertainty needs (N, C) probabilities with C >= 2, got shape {probs.shape}")
    if measure == "margin":
        top2 = np.sort(probs, axis=1)[:, -2:]  # (N, 2)
        return 1.0 - (top2[:, 1] - top2[:, 0])
    if measure == "entropy":
        return -(probs * np.log(np.clip(probs, 1e-300, None))).sum(axis=1)
    raise FlywheelError(f"uncertainty measure must be 'margin' or 'entropy', got {measure!r}")


def disagreement(probs: np.ndarray, global_probs: np.ndarray) -> np.ndarray:
    """(N, C) twice -> (N,) ``[argmax p != argmax q] + JS(p, q)``: every top-1 disagreement above every agreement."""
    p, q = np.asarray(probs, dtype=np.float64), np.asarray(global_probs, dtype=np.float64)
    if p.shape != q.shape:
        raise FlywheelError(f"global_probs has shape {q.shape}, the logged probabilities {p.shape}")
    m = (p + q) / 2
    js = np.clip((_kl(p, m) + _kl(q, m)) / 2, 0.0, math.log(2))  # (N,)
    return (p.argmax(axis=1) != q.argmax(axis=1)).astype(np.float64) + js


def _kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise ``KL(a || b)`` of (N, C) probabilities, ``0 log 0 = 0``."""
    log_a, log_b = np.log(np.clip(a, 1e-300, None)), np.log(np.clip(b, 1e-300, None))
    return (a * (log_a - log_b)).sum(axis=1)


def k_center(points: np.ndarray, k: int, *, first: int | None = None) -> np.ndarray:
    """Greedy k-center: ``k`` row indices of ``points`` (N, D), each the farthest (Euclidean) from those chosen.

    Starts from ``first``, or the row farthest from the mean. A 2-approximation of the k-center problem
    (Gonzalez 1985): no point is farther from its nearest chosen row than twice the optimum.
    """
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    start = int(np.linalg.norm(points - points.mean(axis=0), axis=1).argmax()) if first is None else first
    chosen = [start]
    nearest = np.linalg.norm(points - points[start], axis=1)  # (N,) distance to the closest chosen row
    for _ in range(k - 1):
        nxt = int(nearest.argmax())
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(points - points[nxt], axis=1))
    return np.asarray(chosen, dtype=np.int64)


def select(
    records: Sequence[Prediction],
    k: int,
    *,
    global_probs: np.ndarray | None = None,
    strategy: str = "uncertainty",
    embeddings: np.ndarray | None = None,
    labelled_embeddings: np.ndarray | None = None,
    measure: str = "margin",
    seed: int = 0,
) -> np.ndarray:
    """Indices into ``records`` of the ``k`` inputs most worth labelling, best first (module docstring).

    Parameters
    ----------
    records : sequence of Prediction
    k : int
        How many to pick (fewer where there are fewer distinct texts).
    global_probs : np.ndarray, shape (N, C), optional
        The downloaded global student's probabilities on the same inputs; needed by ``disagreement``.
    strategy : {"uncertainty", "disagreement", "diverse", "mixed", "typical"}
    embeddings : np.ndarray, shape (N, D), optional
        Where diversity is measured (``diverse``, ``mixed``; default the probability vectors) and typicality
        (``typical``: required).
    labelled_embeddings : np.ndarray, shape (M, D), optional
        Embeddings of the device's labelled rows (``typical``: the regions they cover come last).
    measure : {"margin", "entropy"}
        Of uncertainty.
    seed : int
        Of the clustering (``typical``).

    Returns
    -------
    np.ndarray of int64, shape (min(k, distinct texts),)
    """
    if strategy not in STRATEGIES:
        raise FlywheelError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise FlywheelError(f"k must be an integer >= 1, got {k!r}")
    if not records:
        return np.zeros(0, dtype=np.int64)
    probs = np.asarray([r.probs for r in records], dtype=np.float64)  # (N, C)
    for name, arr in (("global_probs", global_probs), ("embeddings", embeddings)):
        if arr is not None and (np.ndim(arr) != 2 or len(arr) != len(records)):
            raise FlywheelError(f"{name} must be (N, ...) with N = {len(records)} records, got {np.shape(arr)}")
    if strategy == "disagreement" and global_probs is None:
        raise FlywheelError("strategy 'disagreement' needs global_probs: the global student's probabilities")
    if strategy == "typical" and embeddings is None:
        raise FlywheelError("strategy 'typical' needs embeddings of the logged texts")
    keep = _first_of_each_text(records)  # (U,) distinct texts
    probs, space = probs[keep], (probs if embeddings is None else np.asarray(embeddings, np.float64))[keep]
    other = None if global_probs is None else np.asarray(global_probs, dtype=np.float64)[keep]
    if strategy == "diverse":
        return keep[k_center(space, k)]
    if strategy == "typical":
        try:
            return keep[typical_select(space, k, labelled=labelled_embeddings, seed=seed)]
        except TypicalError as exc:
            raise FlywheelError(str(exc)) from None
    if strategy == "uncertainty":
        score = uncertainty(probs, measure=measure)
    elif strategy == "disagreement":
        score = disagreement(probs, other)
    else:
        score = _mixed_score(probs, other, measure=measure)
    if strategy == "mixed":
        return keep[_weighted_k_center(space, score, k)]
    return keep[np.argsort(-score, kind="stable")[:k]]  # best first, ties by log order


def _mixed_score(probs: np.ndarray, other: np.ndarray | None, *, measure: str) -> np.ndarray:
    """(U,) in [0, 1]: the mean of uncertainty and, where given, disagreement, each over its largest value
    (margin 1, entropy ``log C``, disagreement ``1 + log 2``)."""
    top = 1.0 if measure == "margin" else math.log(probs.shape[1])
    scores = [uncertainty(probs, measure=measure) / top]
    if other is not None:
        scores.append(disagreement(probs, other) / (1.0 + math.log(2)))
    return np.mean(scores, axis=0)


def _weighted_k_center(points: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """The best-scored row, then each time ``argmax score * distance to the nearest chosen row``; rows at
    distance 0 of the chosen ones (copies) come last, by score."""
    k = min(k, len(points))
    order = np.argsort(-score, kind="stable")
    chosen = [int(order[0])]
    nearest = np.linalg.norm(points - points[chosen[0]], axis=1)  # (U,)
    for _ in range(k - 1):
        gain = score * nearest
        gain[chosen] = -1.0
        if gain.max() <= 0:  # only copies left: by score
            rest = [int(i) for i in order if int(i) not in chosen]
            return np.asarray(chosen + rest[: k - len(chosen)], dtype=np.int64)
        nxt = int(gain.argmax())
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(points - points[nxt], axis=1))
    return np.asarray(chosen, dtype=np.int64)


def _first_of_each_text(records: Sequence[Prediction]) -> np.ndarray:
    seen: set[str] = set()
    keep = []
    for i, record in enumerate(records):
        if record.text not in seen:
            seen.add(record.text)
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


# --- annotation files -----------------------------------------------------------------------


def write_annotation_file(
    records: Sequence[Prediction], path: str | Path, *, label_names: Sequence[str] | None = None
) -> Path:
    """Write ``records`` as CSV (:data:`ANNOTATION_COLUMNS`): ``label`` empty for a person to fill, ``predicted``
    the device's label (its name where ``label_names`` are given) and ``confidence``. Refuses to overwrite."""
    path = Path(path)
    if path.exists():
        raise FlywheelError(f"{path} exists: refusing to overwrite an annotation file (labels may be in it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("x", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(ANNOTATION_COLUMNS)
        for r in records:
            predicted = label_names[r.label] if label_names is not None else (r.label_name or str(r.label))
            writer.writerow([r.text, "", predicted, f"{r.confidence:.4f}"])
    return path


def read_annotations(path: str | Path, *, label_names: Sequence[str]) -> TextDataset:
    """The labelled rows of an annotation file, label ids in ``label_names`` (a row left blank is skipped).

    A label must be one of ``label_names`` (after stripping spaces). Raises :class:`FlywheelError` naming the
    file and line of an unknown label or an empty text, or a missing ``text`` / ``label`` column.
    """
    path, names = Path(path), tuple(str(n) for n in label_names)
    ids = {name: i for i, name in enumerate(names)}
    texts, labels = [], []
    with path.open(encoding="utf-8-sig", newline="") as handle:  # -sig: a spreadsheet may add a BOM
        reader = csv.DictReader(handle)
        missing = [c for c in ("text", "label") if c not in (reader.fieldnames or [])]
        if missing:
            raise FlywheelError(f"{path}:1: no {missing} column; expected a header with 'text' and 'label'")
        for row in reader:
            label = (row["label"] or "").strip()
            if not label:
                continue
            where = f"{path}:{reader.line_num}"
            if label not in ids:
                raise FlywheelError(f"{where}: label {label!r} is not one of the federation's labels {list(names)}")
            if not (row["text"] or "").strip():
                raise FlywheelError(f"{where}: empty text")
            texts.append(row["text"])
            labels.append(ids[label])
    return TextDataset(texts, np.asarray(labels, dtype=np.int64), names, path.name)


def write_labelled(data: TextDataset, path: str | Path) -> Path:
    """Write ``data`` as a ``text,label`` CSV (label names) for the device's data folder. Refuses to overwrite."""
    path = Path(path)
    if path.exists():
        raise FlywheelError(f"{path} exists: refusing to overwrite the device's data")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("x", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("text", "label"))
        writer.writerows((t, data.label_names[int(y)]) for t, y in zip(data.texts, data.labels))
    return path
