"""Typed configuration, parsed once.

One dataclass per concern, grouped in :class:`NebulaConfig`. The same classes drive
three surfaces, so there is exactly one place where a setting, its default, its help
text and its check live:

* the Flower run config (flat ``section.field`` keys, e.g. ``federation.rounds``),
* the ``nebula`` command line (``--rounds``, ``--num-clients`` ...),
* the :class:`~flwr.app.ConfigRecord` the server sends to every node, so that nodes
  in a simulation (which only know their partition id) build the same data view.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from nebula.common.canary import Canary


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


def _opt(default: Any, help: str, *, choices: tuple[str, ...] = (), hidden: bool = False) -> Any:
    """A field with its default and help text; ``choices``: the only values it takes (the command line
    offers them as such); ``hidden``: a test hook, accepted on the command line but left out of its help."""
    return field(default=default, metadata={"help": help, "choices": choices, "hidden": hidden})


@dataclass
class DataConfig:
    dataset: str = _opt("tweets", "builtin dataset (tweets, bbc) or a CSV / JSON-lines file")
    text_field: str = _opt("text", "text column of a user dataset file")
    label_field: str = _opt("label", "label column of a user dataset file")
    test_size: int = _opt(500, "examples in the global test set")
    public_size: int = _opt(1200, "examples in the public unlabeled pool (labels are never used)")
    private_size: int = _opt(1500, "private examples spread over the clients (0 = all that remain)")
    num_clients: int = _opt(5, "number of edge clients")
    partition: str = _opt("dirichlet", "how private data is spread", choices=("iid", "dirichlet", "shards"))
    dirichlet_alpha: float = _opt(0.5, "Dirichlet concentration (smaller = more skewed labels)")
    shards_per_client: int = _opt(2, "label shards per client for the shards scheme")
    holdout_fraction: float = _opt(0.2, "share of each client's data kept for its own test")
    max_length: int = _opt(64, "tokens per input")
    seed: int = _opt(0, "seed of splits, partitions, initialisation and training order")
    canary: str = _opt(
        "",
        "a backdoor planted in one client's private data to check forgetting, 'client-index:fraction:class' "
        "(e.g. '1:0.05:0'; simulation only, common/canary.py)",
    )

    def validate(self) -> None:
        _positive(self, "test_size", "public_size", "num_clients", "max_length", "shards_per_client")
        if self.private_size < 0:
            raise ConfigError(f"data.private_size must be >= 0, got {self.private_size}")
        if self.dirichlet_alpha <= 0:
            raise ConfigError(f"data.dirichlet_alpha must be > 0, got {self.dirichlet_alpha}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(f"data.holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.canary:
            try:
                canary = Canary.parse(self.canary)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            if canary is not None and canary.client >= self.num_clients:
                raise ConfigError(f"data.canary client {canary.client} outside 0..{self.num_clients - 1}")
        if self.partition not in ("iid", "dirichlet", "shards"):
            raise ConfigError(f"data.partition must be iid, dirichlet or shards, got {self.partition!r}")


@dataclass
class ModelConfig:
    student: str = _opt("minilm-l3", "edge student base model: builtin name, HF id or local folder")
    teacher: str = _opt("minilm-l6", "teacher base model: minilm-l6, mpnet, an HF id or a folder")
    lora_r: int = _opt(8, "LoRA rank")
    lora_alpha: int = _opt(16, "LoRA scaling alpha")
    lora_dropout: float = _opt(0.0, "LoRA dropout")
    student_overrides: str = _opt("", "per-client base models, e.g. '1:minilm-l6,3:/models/x' (client index:model)")
    cache_dir: str = _opt("", "folder of materialised builtin models (empty = $NEBULA_CACHE or ~/.cache/nebula)")

    def validate(self) -> None:
        _positive(self, "lora_r", "lora_alpha")
        self.student_for_client(0)  # parses the overrides, raising on a malformed entry

    def student_for_client(self, index: int) -> str:
        """Base model of edge client ``index`` (overrides win over ``student``)."""
        for entry in filter(None, (e.strip() for e in self.student_overrides.split(","))):
            key, sep, model = entry.partition(":")
            if not sep or not key.strip().isdigit() or not model.strip():
                raise ConfigError(f"model.student_overrides entry {entry!r} is not 'client-index:model'")
            if int(key) == index:
                return model.strip()
        return self.student


# The global student's intermediate-layer loss weights (TrainConfig; learning/deep_fit.py applies them).
DEEP_STUDENT_WEIGHTS = ("student_hidden_weight", "student_attention_weight", "student_relation_weight")


@dataclass
class TrainConfig:
    lr: float = _opt(2e-3, "AdamW learning rate of the edge students")
    batch_size: int = _opt(16, "effective batch size")
    micro_batch_size: int = _opt(16, "examples per forward pass; gradients accumulate up to batch_size")
    local_epochs: int = _opt(1, "epochs over private data per round (revisit)")
    digest_epochs: int = _opt(1, "epochs over received targets per round (digest)")
    temperature: float = _opt(1.0, "distillation temperature T")
    alpha: float = _opt(
        0.5,
        "revisit loss = alpha * KL(round-start model's predictions) + (1 - alpha) * CE(labels) from round 2 on: "
        "keeps what the client downloaded while it fits its own data (0 = plain cross-entropy)",
    )
    logit_adjust: bool = _opt(
        True,
        "revisit private data with logit-adjusted cross-entropy: the client's label prior relative to the "
        "federation's is added to its logits, so a skewed client learns what separates its classes, not its prior "
        "(its model keeps estimating the federation's posterior; personalised predictions add the shift back)",
    )
    teacher_lr: float = _opt(1e-3, "AdamW learning rate of the teacher")
    teacher_epochs: int = _opt(1, "teacher epochs over all consensus targets gathered so far")
    student_epochs: int = _opt(1, "global-student epochs over the teacher's targets per round")
    student_inputs: str = _opt(
        "pool",
        "what the global student distills on: pool (teacher's predictions on the whole public pool) or seen",
        choices=("pool", "seen"),
    )
    student_hidden_weight: float = _opt(
        0.0,
        "global student: weight of the hidden-state MSE to the teacher's mapped layers (TinyBERT); needs the "
        "teacher's tokenizer and width (0 = logits only)",
    )
    student_attention_weight: float = _opt(
        0.0,
        "global student: weight of the attention-map KL to the teacher's mapped layers; needs the teacher's "
        "tokenizer and head count (0 = off)",
    )
    student_relation_weight: float = _opt(
        0.0,
        "global student: weight of the self-attention relation KL (MiniLM v2); needs the teacher's tokenizer, "
        "any width or head count (0 = off)",
    )
    student_layer_map: str = _opt(
        "uniform",
        "teacher layer each student layer learns from, for the three weights above: uniform (student layer m <- "
        "teacher layer m*N/M), last (the teacher's last M), one teacher layer per student layer ('2,4,6') or "
        "student:teacher pairs ('1:2,3:6')",
    )
    student_phases: str = _opt(
        "",
        "the global student's phases, counted in rounds (learning/schedule.py, TinyBERT's order): 'warmup:R' trains "
        "its first R rounds on the intermediate-layer terms above alone (one of their weights must be > 0), "
        "'finetune:R' its last R rounds on the logits alone, e.g. 'warmup:1,finetune:2'; the rounds between "
        "use every term ('' = all rounds)",
    )
    eval_every: int = _opt(1, "evaluate clients every n rounds (the last round always)")
    threads: int = _opt(0, "torch threads of an edge client (0 = let torch decide)")
    teacher_threads: int = _opt(0, "torch threads of the teacher node (0 = every core: it works while clients wait)")

    def validate(self) -> None:
        _positive(self, "lr", "batch_size", "micro_batch_size", "teacher_lr", "eval_every", "temperature")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"train.alpha must be in [0, 1], got {self.alpha}")
        if self.student_inputs not in ("pool", "seen"):
            raise ConfigError(f"train.student_inputs must be pool or seen, got {self.student_inputs!r}")
        if self.micro_batch_size > self.batch_size:
            raise ConfigError(
                f"train.micro_batch_size ({self.micro_batch_size}) must be <= train.batch_size ({self.batch_size})"
            )
        for name in ("local_epochs", "digest_epochs", "teacher_epochs", "student_epochs", "threads", "teacher_threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        for name in DEEP_STUDENT_WEIGHTS:
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"train.{name} must be a finite number >= 0, got {value}")
        self.layer_map_kind()  # raises on a misspelt map
        warmup, _ = self.student_phase_rounds()
        if warmup and not any(w > 0 for w in self.deep_student_weights().values()):
            raise ConfigError(
                f"train.student_phases {self.student_phases!r}: a warm-up trains the intermediate-layer terms "
                f"alone, and every one of {', '.join('train.' + n for n in DEEP_STUDENT_WEIGHTS)} is 0"
            )

    def student_phase_rounds(self) -> tuple[int, int]:
        """``(warm-up rounds, fine-tune rounds)`` of ``student_phases``; ConfigError naming a bad entry."""
        rounds = {"warmup": 0, "finetune": 0}
        for entry in filter(None, (e.strip() for e in self.student_phases.split(","))):
            phase, _, count = entry.partition(":")
            if phase.strip() not in rounds or not count.strip().isdigit():
                raise ConfigError(
                    f"train.student_phases entry {entry!r} is not 'warmup:R' or 'finetune:R' (R rounds, an integer)"
                )
            rounds[phase.strip()] = int(count)
        return rounds["warmup"], rounds["finetune"]

    def deep_student_weights(self) -> dict[str, float]:
        """``{"hidden": w, "attention": w, "relation": w}``: the global student's intermediate-layer terms."""
        return {name.split("_")[1]: float(getattr(self, name)) for name in DEEP_STUDENT_WEIGHTS}

    def layer_map_kind(self) -> str | tuple[int, ...] | tuple[tuple[int, int], ...]:
        """``student_layer_map`` as ``nebula.learning.deep_losses.layer_map`` takes it: ``"uniform"``, ``"last"``,
        one teacher layer per student layer (``(2, 4, 6)``) or ``(student, teacher)`` pairs (``((1, 2), (3, 6))``).
        Whether the layers exist is checked against the models, when the student distils."""
        text = self.student_layer_map.strip()
        if text in ("uniform", "last"):
            return text
        try:
            entries = [tuple(int(x) for x in e.split(":")) for e in text.split(",")]
        except ValueError:
            entries = []
        sizes = {len(e) for e in entries}
        if sizes not in ({1}, {2}) or any(x < 0 for e in entries for x in e):
            raise ConfigError(
                "train.student_layer_map must be uniform, last, teacher layers like '2,4,6' or student:teacher "
                f"pairs like '1:2,3:6' (layers >= 0), got {self.student_layer_map!r}"
            )
        return tuple(e[0] for e in entries) if sizes == {1} else tuple(entries)


ISOLATION_LEVELS = ("collaborative", "isolated")  # and sharded:S (FederationConfig.shard_count)
_SHARDED = re.compile(r"sharded:([0-9]+)")


@dataclass
class FederationConfig:
    rounds: int = _opt(3, "federation rounds")
    public_per_round: int = _opt(300, "public inputs the clients answer each round")
    aggregation: str = _opt(
        "class-contrast",
        "aggregation rule: class-contrast, robust-contrast, mean, entropy, class-support, median, trimmed-mean",
    )
    min_replies: int = _opt(2, "valid client replies needed to aggregate a round")
    wire_dtype: str = _opt("float16", "dtype of logits on the wire", choices=("float16", "float32", "int8"))
    reply_timeout: float = _opt(900.0, "seconds to wait for the replies of one exchange")
    output_dir: str = _opt("runs/latest", "folder for the ledger, metrics, plots and checkpoints")
    tensorboard: bool = _opt(
        False,
        "also write each round's metrics as TensorBoard scalars to <output_dir>/tensorboard "
        "(needs the tracking extra: pip install 'nebula-fd[tracking]')",
    )
    client_init: str = _opt(
        "global-student",
        "what an edge client starts each round from: global-student (download the teacher's global student when "
        "the client runs the same base model; uploads stay logits) or own (its own adapter only)",
        choices=("global-student", "own"),
    )
    isolation: str = _opt(
        "collaborative",
        "how far one client's data reaches the others (design.md, 'Decisions taken'): collaborative (clients digest "
        "the teacher's targets and start from the global student; best accuracy; forgetting is approximate) or "
        "isolated (each client answers from an expert trained only on its own data, with a uniform label prior; the "
        "server applies the federation's prior to the consensus; forgetting a client is a server-side "
        "recomputation, exact by construction: nebula unlearn --mode exact-replay) or sharded:S (S >= 2 shards of "
        "clients, each its own collaborative federation and teacher; the global student distils from the shard "
        "teachers' ensemble; forgetting a client retrains its shard only, exact: simulation/sharded.py)",
    )
    exclude_clients: str = _opt(
        "",
        "client ids left out of the federation although their data exists, e.g. 'client-3' (comma list): the "
        "from-scratch reference that exact forgetting is compared with",
    )
    resume: bool = _opt(
        False,
        "continue the last run in output_dir's ledger after a restart: finished rounds are kept, the teacher restores "
        "its last checkpoint (server/resume.py); the other settings must be the run's own",
    )
    unlearn_key: str = _opt(
        "",
        "the server's Ed25519 signing key (PEM) for unlearning certificates: with it, this run carries out the "
        "unlearning requests stored in its ledger between rounds and the teacher node restores the unlearned "
        "states (nebula unlearn serve leaves them to the live run)",
    )
    node_registry: str = _opt(
        "",
        "a deployment's node registry (nodes.json, written by nebula certs): the server then takes each node's role "
        "and client id from its authenticated key, not from what the node says (server/identity.py)",
    )
    faults: str = _opt("", "fault injection for tests and demos, e.g. '2:nan,3:bad-ids' (client:kind)", hidden=True)
    adversaries: str = _opt(
        "",
        "simulated poisoning clients, a research and robustness tool (client/adversary.py): each one trains honestly "
        "but answers poisoned logits, e.g. '2:random,5:inverted,3:flip=0>1,7:collude,8:collude' (client:kind)",
    )
    reputation: bool = _opt(
        False,
        "weight each client by its reputation: its agreement with the cohort, tracked across rounds; a client far "
        "below the cohort is down-weighted or left out until it agrees again (server/reputation.py)",
    )
    inference_clients: str = _opt(
        "",
        "edge clients that only answer logits from an ONNX export (no training, no torch), "
        "e.g. '2:exports/student' (client index:export folder)",
    )

    def validate(self) -> None:
        _positive(self, "rounds", "public_per_round", "min_replies", "reply_timeout")
        if self.isolation not in ISOLATION_LEVELS and self.shard_count() is None:
            raise ConfigError(
                f"federation.isolation must be one of {', '.join(ISOLATION_LEVELS)} or sharded:S (S >= 2 shards), "
                f"got {self.isolation!r}"
            )
        if self.client_init not in ("global-student", "own"):
            raise ConfigError(f"federation.client_init must be global-student or own, got {self.client_init!r}")
        if self.wire_dtype not in ("float16", "float32", "int8"):
            raise ConfigError(f"federation.wire_dtype must be float16, float32 or int8, got {self.wire_dtype!r}")
        self.inference_exports()  # parses the entries, raising on a malformed one
        self.adversary_kinds()

    def shard_count(self) -> int | None:
        """S of ``isolation = "sharded:S"``, None for the other levels; ConfigError for a ``sharded`` value
        that is not ``sharded:`` and a whole number >= 2 (whether S <= data.num_clients: NebulaConfig.validate)."""
        if not self.isolation.startswith("sharded"):
            return None
        match = _SHARDED.fullmatch(self.isolation)
        if match is None or int(match[1]) < 2:
            raise ConfigError(
                f"federation.isolation {self.isolation!r}: sharded:S needs a whole number S >= 2 of shards, "
                "e.g. 'sharded:2'"
            )
        return int(match[1])

    def adversary_kinds(self) -> dict[int, tuple[str, tuple[int, ...]]]:
        """``adversaries`` as ``{client index: (kind, arguments)}`` (client/adversary.py).

        Each entry is ``index:kind`` with kind ``random``, ``inverted``, ``collude`` or ``flip=A>B``
        (classes ``A != B``), which gives ``("flip", (A, B))``. Raises :class:`ConfigError` naming a
        malformed or repeated entry.
        """
        kinds: dict[int, tuple[str, tuple[int, ...]]] = {}
        for entry in filter(None, (e.strip() for e in self.adversaries.split(","))):
            key, _, kind = (part.strip() for part in entry.partition(":"))
            flip = re.fullmatch(r"flip=(\d+)>(\d+)", kind)
            if not key.isdigit() or not (kind in ("random", "inverted", "collude") or flip):
                raise ConfigError(
                    f"federation.adversaries entry {entry!r} is not 'client-index:kind' with kind random, inverted, "
                    "collude or flip=A>B"
                )
            if flip and flip[1] == flip[2]:
                raise ConfigError(f"federation.adversaries entry {entry!r} flips class {flip[1]} to itself")
            if int(key) in kinds:
                raise ConfigError(f"federation.adversaries entry {entry!r} repeats client {int(key)}")
            kinds[int(key)] = ("flip", (int(flip[1]), int(flip[2]))) if flip else (kind, ())
        return kinds

    def excluded(self) -> set[str]:
        """``exclude_clients`` as a set of client ids."""
        return {e.strip() for e in self.exclude_clients.split(",") if e.strip()}

    def inference_exports(self) -> dict[int, str]:
        """``inference_clients`` as ``{client index: export folder}`` (client/runtime/inference.py).

        Each entry is ``index:folder``; the folder is everything after the first colon.
        Raises :class:`ConfigError` naming a malformed or repeated entry.
        """
        exports: dict[int, str] = {}
        for entry in filter(None, (e.strip() for e in self.inference_clients.split(","))):
            key, sep, folder = entry.partition(":")
            if not sep or not key.strip().isdigit() or not folder.strip():
                raise ConfigError(f"federation.inference_clients entry {entry!r} is not 'client-index:export-folder'")
            if int(key) in exports:
                raise ConfigError(f"federation.inference_clients entry {entry!r} repeats client {int(key)}")
            exports[int(key)] = folder.strip()
        return exports


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "federation": FederationConfig}


# Fields of ``federation`` a node is never sent, and what it gets instead (NebulaConfig.for_nodes).
SERVER_ONLY = {"unlearn_key": "", "output_dir": FederationConfig.output_dir, "node_registry": ""}


@dataclass
class NebulaConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)

    def validate(self) -> NebulaConfig:
        for name in SECTIONS:
            getattr(self, name).validate()
        if self.federation.min_replies > self.data.num_clients:
            raise ConfigError(
                f"federation.min_replies ({self.federation.min_replies}) exceeds data.num_clients "
                f"({self.data.num_clients})"
            )
        warmup, finetune = self.train.student_phase_rounds()
        if warmup + finetune > self.federation.rounds or warmup >= self.federation.rounds:
            raise ConfigError(
                f"train.student_phases {self.train.student_phases!r} does not fit federation.rounds "
                f"({self.federation.rounds}): the phases may span at most every round, and the warm-up must leave "
                "one round that trains the logits"
            )
        shards = self.federation.shard_count()
        if shards is not None and shards > self.data.num_clients:
            raise ConfigError(
                f"federation.isolation {self.federation.isolation!r}: {shards} shards for data.num_clients "
                f"({self.data.num_clients}); S must be at most the number of clients"
            )
        return self

    # --- flat form: Flower run config and ConfigRecord -------------------------------
    def to_flat(self) -> dict[str, Any]:
        """``{"section.field": value}`` with scalar values only."""
        return {
            f"{section}.{f.name}": getattr(getattr(self, section), f.name)
            for section, cls in SECTIONS.items()
            for f in fields(cls)
        }

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any], *, base: NebulaConfig | None = None) -> NebulaConfig:
        """Parse flat keys over ``base`` (defaults if None); unknown keys are an error."""
        config = dataclasses.replace(base) if base is not None else cls()
        sections = {name: dataclasses.replace(getattr(config, name)) for name in SECTIONS}
        for key, value in flat.items():
            section, _, name = str(key).partition(".")
            if section not in SECTIONS or name not in _field_types(SECTIONS[section]):
                raise ConfigError(f"unknown configuration key {key!r}")
            setattr(sections[section], name, _coerce(key, value, _field_types(SECTIONS[section])[name]))
        return cls(**sections).validate()

    def for_nodes(self) -> NebulaConfig:
        """This configuration as the server sends it to nodes: without what only the server may know
        (:data:`SERVER_ONLY`: the path of the unlearning signing key, the server's run folder)."""
        federation = dataclasses.replace(self.federation, **SERVER_ONLY)
        return dataclasses.replace(self, federation=federation)

    def fingerprint(self) -> str:
        """Short stable hash, used to key per-process caches."""
        return hashlib.sha256(json.dumps(self.to_flat(), sort_keys=True).encode()).hexdigest()[:16]


def _positive(obj: Any, *names: str) -> None:
    section = type(obj).__name__.removesuffix("Config").lower()
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{section}.{name} must be > 0, got {getattr(obj, name)}")


def _field_types(cls: type) -> dict[str, type]:
    return {f.name: type(f.default) for f in fields(cls)}


def _coerce(key: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes"):
            return True
        if str(value).lower() in ("0", "false", "no"):
            return False
        raise ConfigError(f"{key} must be a boolean, got {value!r}")
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be {kind.__name__}, got {value!r}") from None


# --- command line ------------------------------------------------------------------
@dataclass(frozen=True)
class CommandLineOption:
    """A configuration field as an option of the ``nebula`` command (cli/_args.py builds the flags from these)."""

    key: str  # flat key, e.g. "federation.rounds"
    flag: str  # "--rounds": the field's name, so unique over the sections
    kind: type  # int, float, str or bool (the default's type)
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    hidden: bool = False


def command_line_options() -> list[CommandLineOption]:
    """One option per field of every section, in declaration order; ConfigError if two fields share a flag."""
    options, taken = [], {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            option = CommandLineOption(
                key=f"{section}.{f.name}",
                flag="--" + f.name.replace("_", "-"),
                kind=type(f.default),
                default=f.default,
                help=f.metadata.get("help", ""),
                choices=tuple(f.metadata.get("choices", ())),
                hidden=f.metadata.get("hidden", False),
            )
            if option.flag in taken:
                raise ConfigError(f"{option.key} and {taken[option.flag]} would both be {option.flag}: rename one")
            taken[option.flag] = option.key
            options.append(option)
    return options
