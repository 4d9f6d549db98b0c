"""Typed messages between the server and the nodes: one dataclass per message kind.

Each kind builds its Flower ``RecordDict`` with ``to_record()`` and is read back, once, with
``from_record()``, which checks every field (presence, type, range, finiteness) and raises
:class:`MessageError` naming the message kind and the field. Record and field names are the
constants of :mod:`nebula.common.keys`; nothing else in Nebula assembles or takes apart a message.

Layout (unchanged from the first wave, so nodes of either side interoperate)::

    request  = {CONFIG: ConfigRecord(flat NebulaConfig), ROUND: ConfigRecord(fields), [STUDENT_STATE: ArrayRecord]}
    reply    = {REPLY: ConfigRecord(fields), [METRICS: MetricRecord], [STUDENT_STATE: ArrayRecord]}

Wire-format payloads (logits, consensus, targets) stay ``bytes`` here: :mod:`nebula.common.wire`
decodes them where the expected ids and classes are known.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from nebula.common import keys
from nebula.common.config import ConfigError, NebulaConfig

ROLES = (keys.ROLE_CLIENT, keys.ROLE_TEACHER, keys.ROLE_INFERENCE)
CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # stored in the ledger, logged, used in paths
MAX_EXAMPLES = 10**9  # a client's example count above this is not a device's data
_Request = TypeVar("_Request", bound="_EnvelopeOnly")  # typing.Self is 3.11+: a device runs Python 3.10


class MessageError(ValueError):
    """A message that does not follow its schema; names the message kind and the field."""

    def __init__(self, kind: str, field_name: str, problem: str) -> None:
        super().__init__(f"{kind}: {field_name!r} {problem}")
        self.kind, self.field, self.problem = kind, field_name, problem


# -- field readers: each names the field it rejects ----------------------------------------------
class _Fields:
    """The fields of one ConfigRecord of a message of kind ``kind``."""

    def __init__(self, kind: str, rec: ConfigRecord | None, record_name: str) -> None:
        if rec is None:
            raise MessageError(kind, record_name, "record is missing")
        self.kind, self.rec = kind, rec

    def _get(self, key: str, *, optional: bool) -> Any:
        if key not in self.rec:
            if optional:
                return None
            raise MessageError(self.kind, key, "is missing")
        return self.rec[key]

    def int(self, key: str, *, minimum: int | None = None, optional: bool = False) -> int | None:
        value = self._get(key, optional=optional)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise MessageError(self.kind, key, f"is {type(value).__name__} {value!r}, not an integer")
        if minimum is not None and value < minimum:
            raise MessageError(self.kind, key, f"is {value}, below {minimum}")
        return value

    def _typed(self, key: str, kind: type, what: str, *, optional: bool) -> Any:
        value = self._get(key, optional=optional)
        if value is not None and not isinstance(value, kind):
            raise MessageError(self.kind, key, f"is {type(value).__name__}, not {what}")
        return value

    def str(self, key: str, *, optional: bool = False) -> str | None:
        return self._typed(key, str, "a string", optional=optional)

    def bool(self, key: str, *, default: bool) -> bool:
        value = self._get(key, optional=True)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise MessageError(self.kind, key, f"is {type(value).__name__} {value!r}, not a boolean")
        return value

    def bytes(self, key: str, *, optional: bool = False) -> bytes | None:
        value = self._typed(key, bytes, "bytes", optional=optional)
        return value or None if optional else value

    def ints(self, key: str, *, minimum: int | None = None, optional: bool = False) -> np.ndarray | None:
        """A list of integers as an int64 array ``(N,)``."""
        value = self._get(key, optional=optional)
        if value is None:
            return None
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise MessageError(self.kind, key, f"is not a list of integers ({type(value).__name__})")
        out = np.asarray(value, dtype=np.int64)
        if minimum is not None and out.size and out.min() < minimum:
            raise MessageError(self.kind, key, f"holds {int(out.min())}, below {minimum}")
        return out


def _config(kind: str, content: RecordDict) -> NebulaConfig:
    rec = content.config_records.get(keys.CONFIG)
    if rec is None:
        raise MessageError(kind, keys.CONFIG, "record is missing")
    try:
        return NebulaConfig.from_flat(dict(rec))
    except (ConfigError, TypeError, ValueError) as exc:
        raise MessageError(kind, keys.CONFIG, f"is not a valid configuration: {exc}") from None


def _metrics(kind: str, content: RecordDict) -> dict[str, float]:
    rec = content.metric_records.get(keys.METRICS)
    if rec is None:
        return {}
    out = {}
    for name, value in rec.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise MessageError(kind, f"{keys.METRICS}.{name}", f"is {value!r}, not a finite number")
        out[name] = float(value)
    return out


def _state(kind: str, content: RecordDict) -> dict[str, np.ndarray] | None:
    rec = content.array_records.get(keys.STUDENT_STATE)
    if rec is None:
        return None
    try:
        state = {name: array.numpy() for name, array in rec.items()}
    except Exception as exc:
        raise MessageError(
            kind, keys.STUDENT_STATE, f"holds an unreadable array ({type(exc).__name__}: {exc})"
        ) from None
    return state


def _state_record(state: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in state.items()})


def _reply(
    fields: dict, metrics: Mapping[str, float] | None = None, state: Mapping[str, np.ndarray] | None = None
) -> RecordDict:
    content = RecordDict({keys.REPLY: ConfigRecord(fields)})
    if metrics:
        content[keys.METRICS] = MetricRecord({name: float(value) for name, value in metrics.items()})
    if state is not None:
        content[keys.STUDENT_STATE] = _state_record(state)
    return content


# -- requests: server -> node ------------------------------------------------------------------
@dataclass(frozen=True)
class Envelope:
    """What every request carries: the federation's configuration, which simulated partition is the
    teacher, and the run folder (the teacher node writes its checkpoints there)."""

    config: NebulaConfig
    teacher_index: int
    output_dir: str

    def record(self, kind: str, fields: dict) -> RecordDict:
        round_fields = {keys.TEACHER_INDEX: self.teacher_index, keys.OUTPUT_DIR: self.output_dir, **fields}
        config = ConfigRecord(self.config.for_nodes().to_flat())  # nothing only the server may know
        return RecordDict({keys.CONFIG: config, keys.ROUND: ConfigRecord(round_fields)})

    @classmethod
    def read(cls, kind: str, content: RecordDict) -> tuple[Envelope, _Fields]:
        config = _config(kind, content)
        rec = _Fields(kind, content.config_records.get(keys.ROUND, ConfigRecord()), keys.ROUND)
        teacher_index = rec.int(keys.TEACHER_INDEX, minimum=0, optional=True)
        output_dir = rec.str(keys.OUTPUT_DIR, optional=True)
        return cls(config, config.data.num_clients if teacher_index is None else teacher_index, output_dir or ""), rec


@dataclass(frozen=True)
class _EnvelopeOnly:
    """A request that carries nothing but its envelope; a subclass names its ``TYPE``."""

    TYPE: ClassVar[str]
    envelope: Envelope

    def to_record(self) -> RecordDict:
        return self.envelope.record(self.TYPE, {})

    @classmethod
    def from_record(cls: type[_Request], content: RecordDict) -> _Request:
        return cls(Envelope.read(cls.TYPE, content)[0])


@dataclass(frozen=True)
class DescribeRequest(_EnvelopeOnly):
    """Server -> every node, once: who are you, what do you hold?"""

    TYPE: ClassVar[str] = keys.MSG_DESCRIBE


@dataclass(frozen=True)
class RoundRequest:
    """Server -> edge client: digest ``targets`` (last round's, if any), revisit, answer logits on ``query_ids``.

    ``student`` is the global student's trainable state (name -> array) for a client that runs
    ``student_model``; ``class_counts`` the federation's label counts (for logit adjustment).
    """

    TYPE: ClassVar[str] = keys.MSG_ROUND
    envelope: Envelope
    round_index: int
    query_ids: np.ndarray  # (N,) int64
    class_counts: tuple[int, ...] = ()
    targets: bytes | None = None
    student: dict[str, np.ndarray] | None = None
    student_model: str = ""

    def to_record(self) -> RecordDict:
        fields: dict = {
            keys.ROUND_INDEX: self.round_index,
            keys.QUERY_IDS: [int(i) for i in self.query_ids],
            keys.CLASS_COUNTS: list(self.class_counts),
        }
        if self.targets is not None:
            fields[keys.TARGET_BLOB] = self.targets
        if self.student is not None:
            fields[keys.STUDENT_MODEL] = self.student_model
        content = self.envelope.record(self.TYPE, fields)
        if self.student is not None:
            content[keys.STUDENT_STATE] = _state_record(self.student)
        return content

    @classmethod
    def from_record(cls, content: RecordDict) -> RoundRequest:
        envelope, rec = Envelope.read(cls.TYPE, content)
        counts = rec.ints(keys.CLASS_COUNTS, minimum=0, optional=True)
        return cls(
            envelope,
            round_index=rec.int(keys.ROUND_INDEX, minimum=1),
            query_ids=rec.ints(keys.QUERY_IDS, minimum=0),
            class_counts=tuple(int(c) for c in counts) if counts is not None else (),
            targets=rec.bytes(keys.TARGET_BLOB, optional=True),
            student=_state(cls.TYPE, content),
            student_model=rec.str(keys.STUDENT_MODEL, optional=True) or "",
        )


@dataclass(frozen=True)
class TeachRequest:
    """Server -> teacher: the round's consensus (wire-format log-probabilities, see common.probabilities).

    The teacher trains on it, checkpoints and answers a :class:`TeachReply`."""

    TYPE: ClassVar[str] = keys.MSG_TEACH
    envelope: Envelope
    round_index: int
    consensus: bytes

    def to_record(self) -> RecordDict:
        return self.envelope.record(
            self.TYPE, {keys.ROUND_INDEX: self.round_index, keys.CONSENSUS_BLOB: self.consensus}
        )

    @classmethod
    def from_record(cls, content: RecordDict) -> TeachRequest:
        envelope, rec = Envelope.read(cls.TYPE, content)
        return cls(envelope, round_index=rec.int(keys.ROUND_INDEX, minimum=1), consensus=rec.bytes(keys.CONSENSUS_BLOB))


@dataclass(frozen=True)
class RestoreRequest:
    """Server -> teacher after a restart or a live unlearning request: load round ``restore_round``'s
    checkpoint (0: the initial state), or the states in ``restore_dir`` (relative to the run folder), or
    keep its own (``keep``), with the consensus ``gathered`` so far; answer logits on ``query_ids`` if given."""

    TYPE: ClassVar[str] = keys.MSG_RESTORE
    envelope: Envelope
    restore_round: int
    restore_dir: str = ""
    keep: bool = False
    gathered: bytes | None = None
    query_ids: np.ndarray | None = None

    def to_record(self) -> RecordDict:
        fields: dict = {
            keys.RESTORE_ROUND: self.restore_round,
            keys.RESTORE_DIR: self.restore_dir,
            keys.RESTORE_KEEP: self.keep,
        }
        if self.gathered is not None:
            fields[keys.GATHERED_BLOB] = self.gathered
        if self.query_ids is not None:
            fields[keys.QUERY_IDS] = [int(i) for i in self.query_ids]
        return self.envelope.record(self.TYPE, fields)

    @classmethod
    def from_record(cls, content: RecordDict) -> RestoreRequest:
        envelope, rec = Envelope.read(cls.TYPE, content)
        restore_dir = rec.str(keys.RESTORE_DIR, optional=True) or ""
        if restore_dir and (restore_dir.startswith("/") or ".." in restore_dir.split("/")):
            raise MessageError(cls.TYPE, keys.RESTORE_DIR, f"is {restore_dir!r}, not a folder inside the run folder")
        return cls(
            envelope,
            restore_round=rec.int(keys.RESTORE_ROUND, minimum=0),
            restore_dir=restore_dir,
            keep=rec.bool(keys.RESTORE_KEEP, default=False),
            gathered=rec.bytes(keys.GATHERED_BLOB, optional=True),
            query_ids=rec.ints(keys.QUERY_IDS, minimum=0, optional=True),
        )


@dataclass(frozen=True)
class FinishRequest(_EnvelopeOnly):
    """Server -> every node at the end of a run: save your adapters."""

    TYPE: ClassVar[str] = keys.MSG_FINISH


# -- replies: node -> server -------------------------------------------------------------------
# The server knows who answered from the node it asked; a reply's ``client_id`` is informational.
@dataclass(frozen=True)
class DescribeReply:
    """A node's answer to :class:`DescribeRequest`: its role, identity, base model and what it holds."""

    TYPE: ClassVar[str] = keys.MSG_DESCRIBE
    role: str
    client_id: str
    client_index: int
    model: str
    num_examples: int
    label_counts: tuple[int, ...]

    def to_record(self) -> RecordDict:
        return _reply(
            {
                keys.ROLE: self.role,
                keys.CLIENT_ID: self.client_id,
                keys.CLIENT_INDEX: self.client_index,
                keys.MODEL: self.model,
                keys.NUM_EXAMPLES: self.num_examples,
                keys.LABEL_COUNTS: list(self.label_counts),
            }
        )

    @classmethod
    def from_record(cls, content: RecordDict) -> DescribeReply:
        rec = _Fields(cls.TYPE, content.config_records.get(keys.REPLY), keys.REPLY)
        role = rec.str(keys.ROLE)
        if role not in ROLES:
            raise MessageError(cls.TYPE, keys.ROLE, f"is {role!r}, not one of {', '.join(ROLES)}")
        client_id = rec.str(keys.CLIENT_ID)
        if not CLIENT_ID.match(client_id):
            shown = repr(client_id[:80])
            raise MessageError(cls.TYPE, keys.CLIENT_ID, f"is {shown}: use 1-64 letters, digits, '.', '_' or '-'")
        num_examples = rec.int(keys.NUM_EXAMPLES, minimum=0)
        counts = tuple(int(c) for c in rec.ints(keys.LABEL_COUNTS, minimum=0))
        _check_holdings(role, num_examples, counts)
        return cls(role, client_id, rec.int(keys.CLIENT_INDEX, minimum=-1), rec.str(keys.MODEL), num_examples, counts)


def _check_holdings(role: str, num_examples: int, counts: tuple[int, ...]) -> None:
    """A client's example count is its label counts' sum, within bounds; other roles hold no private data."""
    kind = DescribeReply.TYPE
    if role == keys.ROLE_CLIENT and num_examples > MAX_EXAMPLES:
        raise MessageError(kind, keys.NUM_EXAMPLES, f"is {num_examples}, above {MAX_EXAMPLES}")
    if role == keys.ROLE_CLIENT and sum(counts) != num_examples:
        raise MessageError(kind, keys.LABEL_COUNTS, f"sum to {sum(counts)}, num-examples says {num_examples}")
    if role != keys.ROLE_CLIENT and (num_examples or any(counts)):
        raise MessageError(kind, keys.NUM_EXAMPLES, f"is {num_examples}: a {role} node holds no private data")


@dataclass(frozen=True)
class RoundReply:
    """An edge client's answer to :class:`RoundRequest`: its logits (wire format) and metrics.

    The server decodes the logits against the ids and classes it asked for (server/replies.py)."""

    TYPE: ClassVar[str] = keys.MSG_ROUND
    client_id: str
    logits: bytes
    metrics: dict[str, float] = field(default_factory=dict)

    def to_record(self) -> RecordDict:
        return _reply({keys.CLIENT_ID: self.client_id, keys.LOGITS_BLOB: self.logits}, self.metrics)

    @classmethod
    def from_record(cls, content: RecordDict) -> RoundReply:
        rec = _Fields(cls.TYPE, content.config_records.get(keys.REPLY), keys.REPLY)
        return cls(
            rec.str(keys.CLIENT_ID, optional=True) or "", rec.bytes(keys.LOGITS_BLOB), _metrics(cls.TYPE, content)
        )


@dataclass(frozen=True)
class TeachReply:
    """The teacher's answer to :class:`TeachRequest`: refined targets (wire format), metrics, the global student."""

    TYPE: ClassVar[str] = keys.MSG_TEACH
    client_id: str
    refined: bytes
    metrics: dict[str, float] = field(default_factory=dict)
    student: dict[str, np.ndarray] | None = None
    checkpoint: str = ""  # the checkpoint folder the teacher wrote, relative to the run folder

    def to_record(self) -> RecordDict:
        fields = {keys.CLIENT_ID: self.client_id, keys.REFINED_BLOB: self.refined, keys.CHECKPOINT: self.checkpoint}
        return _reply(fields, self.metrics, self.student)

    @classmethod
    def from_record(cls, content: RecordDict) -> TeachReply:
        rec = _Fields(cls.TYPE, content.config_records.get(keys.REPLY), keys.REPLY)
        return cls(
            rec.str(keys.CLIENT_ID, optional=True) or "",
            rec.bytes(keys.REFINED_BLOB),
            _metrics(cls.TYPE, content),
            _state(cls.TYPE, content),
            rec.str(keys.CHECKPOINT, optional=True) or "",
        )


@dataclass(frozen=True)
class RestoreReply:
    """The teacher's answer to :class:`RestoreRequest`: the global student, and logits on the asked ids."""

    TYPE: ClassVar[str] = keys.MSG_RESTORE
    client_id: str
    refined: bytes | None = None
    student: dict[str, np.ndarray] | None = None

    def to_record(self) -> RecordDict:
        fields: dict = {keys.CLIENT_ID: self.client_id}
        if self.refined is not None:
            fields[keys.REFINED_BLOB] = self.refined
        return _reply(fields, None, self.student)

    @classmethod
    def from_record(cls, content: RecordDict) -> RestoreReply:
        rec = _Fields(cls.TYPE, content.config_records.get(keys.REPLY), keys.REPLY)
        return cls(
            rec.str(keys.CLIENT_ID, optional=True) or "",
            rec.bytes(keys.REFINED_BLOB, optional=True),
            _state(cls.TYPE, content),
        )


@dataclass(frozen=True)
class FinishReply:
    """A node's answer to :class:`FinishRequest`."""

    TYPE: ClassVar[str] = keys.MSG_FINISH
    client_id: str

    def to_record(self) -> RecordDict:
        return _reply({keys.CLIENT_ID: self.client_id})

    @classmethod
    def from_record(cls, content: RecordDict) -> FinishReply:
        return cls(
            _Fields(cls.TYPE, content.config_records.get(keys.REPLY), keys.REPLY).str(keys.CLIENT_ID, optional=True)
            or ""
        )
