"""``federation.isolation = sharded:S``: SISA's shards (Bourtoule et al. 2021) over the Flower-native federation.

The clients ``client-0 .. client-(K-1)`` are split into S shards by a fixed rule, round-robin by index
(:func:`assign`: ``client-i`` joins shard ``i mod S``). It depends on the client's index and S only, so a
federation run from scratch without a client, or one a later client joins, keeps everyone else's shard;
the shards differ in size by at most one client. ``data.seed`` is recorded beside it, not used by it.

1. **Shards.** Each shard is a collaborative federation of its own clients only: the engine
   (simulation/engine.py) runs with ``federation.exclude_clients`` = every client outside the shard, into
   ``OUT/shard-<k>/``. Each shard has its own teacher adapter on the shared frozen teacher base, its own
   ledger and per-round checkpoints; its clients receive only its targets and its student. A shard's
   ``federation.min_replies`` is capped at its size.
2. **Global student.** Distilled on the public pool from the shard teachers' ensemble (simulation/ensemble.py:
   the mean of their ``softmax(z / T)``, deterministic), evaluated on the global test set and saved in
   ``OUT/global-student/`` as every global student is (an adapter), with its trainable state in ``student.pt``.
   ``OUT/results.md`` and ``results.json``: one row per shard (its own teacher and student), one for the whole.
3. **Forgetting** (:func:`forget`): the client's shard runs again from scratch without it (its remaining
   clients answer again: in simulation, a real federation) into ``OUT/unlearning/<client>/shard-<k>/``, and
   the global student is distilled again into ``OUT/unlearning/<client>/global-student/``. No other shard
   trains. The result equals, bit for bit, a sharded run from scratch without the client (the runs are
   deterministic: tests/simulation/test_sharded.py). The cost is in ``OUT/unlearning/<client>/forget.json``,
   with the level, the mode (``shard-retrain``) and ``"exact": true``. The command: ``nebula unlearn shard
   CLIENT --run OUT`` (cli/unlearn.py).

``OUT/shards.json`` (:class:`Manifest`) records the rule, the assignment, each shard's clients now and the
folder of its current run, the forgotten clients and the current global student; it is written at the start
and rewritten after each forgetting, last, so an interrupted forgetting leaves the previous models in force.

Not built: SISA's slicing (a shard restarting from the checkpoint before a late joiner's first round: in
simulation every client joins at round 1, so a shard retrains from scratch), ``federation.resume``, live
unlearning inside a shard, and a deployment (``nebula deploy``) of shards.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nebula.common.config import NebulaConfig
from nebula.common.metrics import majority_rate
from nebula.common.run_folder import RunFolder
from nebula.server.metrics_log import MetricsLog
from nebula.simulation import ensemble

MANIFEST, RESULTS_MD, RESULTS_JSON, FORGET_JSON = "shards.json", "results.md", "results.json", "forget.json"
SHARD_RETRAIN = "shard-retrain"  # the unlearning mode of :func:`forget`: the client's shard retrained
GLOBAL_STUDENT = "global-student"
RULE = "round-robin by index: client-i joins shard i mod S"


# -- the assignment ---------------------------------------------------------------
def assign(num_clients: int, shards: int) -> dict[str, int]:
    """``{client id: shard}`` for ``client-0 .. client-(num_clients-1)``: :data:`RULE`."""
    if not 2 <= shards <= num_clients:
        raise ValueError(f"{shards} shards for {num_clients} clients: need 2 <= S <= the number of clients")
    return {f"client-{i}": i % shards for i in range(num_clients)}


# -- the manifest --------------------------------------------------------------------------------------
@dataclass
class Manifest:
    """``OUT/shards.json``: who is in which shard, and which folders hold the models now."""

    level: str
    seed: int
    assignment: dict[str, int]
    excluded: list[str]  # federation.exclude_clients of the run: never took part
    folders: list[str | None]  # per shard: its current run folder, relative to OUT (None: no client left)
    forgotten: list[str] = field(default_factory=list)
    global_student: str = GLOBAL_STUDENT  # the current global student's folder, relative to OUT
    rule: str = RULE
    config: dict = field(default_factory=dict)  # the run's configuration, flat (NebulaConfig.to_flat)

    @property
    def shards(self) -> int:
        return len(self.folders)

    def members(self, shard: int) -> list[str]:
        """The clients of ``shard`` now: assigned, neither excluded nor forgotten, in index order."""
        gone = set(self.excluded) | set(self.forgotten)
        ids = [c for c, s in self.assignment.items() if s == shard and c not in gone]
        return sorted(ids, key=lambda c: int(c.rsplit("-", 1)[1]))

    def to_json(self) -> str:
        shards = [{"shard": k, "clients": self.members(k), "folder": f} for k, f in enumerate(self.folders)]
        fields = dataclasses.asdict(self)
        config = fields.pop("config")  # last: the long part
        return json.dumps({**fields, "shards": shards, "config": config}, indent=2) + "\n"

    @classmethod
    def read(cls, out: Path) -> Manifest:
        path = Path(out) / MANIFEST
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a sharded run's manifest ({exc})") from exc
        raw.pop("shards", None)
        try:
            return cls(**raw)
        except TypeError as exc:  # a field missing or unknown: another program's file, or a damaged one
            raise ValueError(f"{path}: not a sharded run's manifest ({exc})") from exc

    def write(self, out: Path) -> None:
        _write_atomic(Path(out) / MANIFEST, self.to_json())


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# -- the shards ----------------------------------------------------------------------------------------
def shard_config(config: NebulaConfig, members: Sequence[str], folder: Path) -> NebulaConfig:
    """The configuration of one shard's federation: ``members`` only, collaborative, into ``folder``."""
    others = sorted(set(f"client-{i}" for i in range(config.data.num_clients)) - set(members))
    federation = dataclasses.replace(
        config.federation,
        isolation="collaborative",
        exclude_clients=",".join(others),
        min_replies=min(config.federation.min_replies, len(members)),
        output_dir=str(folder),
    )
    return dataclasses.replace(config, federation=federation).validate()


@dataclass(frozen=True)
class ShardRun:
    shard: int
    clients: list[str]
    folder: Path
    history: list[dict]
    seconds: float


def run_shard(
    config: NebulaConfig,
    shard: int,
    members: Sequence[str],
    folder: Path,
    *,
    on_round: Callable[[int, dict], None] | None = None,
    workers: int | None = None,
    verbose: bool = False,
) -> ShardRun:
    """Run shard ``shard``'s federation from scratch into ``folder`` (emptied first)."""
    from nebula.simulation.engine import simulate

    if folder.exists():
        shutil.rmtree(folder)
    t0 = time.perf_counter()
    report = (lambda row: on_round(shard, row)) if on_round is not None else None
    history = simulate(shard_config(config, members, folder), on_round=report, workers=workers, verbose=verbose)
    return ShardRun(shard, list(members), folder, history, time.perf_counter() - t0)


def client_rounds(folder: Path, *, without: str = "") -> int:
    """Contributions in a shard's ledger (its last run), those of ``without`` not counted."""
    from nebula.server.ledger import Ledger

    ledger = Ledger(RunFolder(folder).ledger)
    try:
        runs = ledger.runs()
        return sum(c.client_id != without for _, c in ledger.contributions(runs[-1])) if runs else 0
    finally:
        ledger.close()


def compute_seconds(shard_folders: Sequence[Path], student: dict) -> float | None:
    """CPU seconds of the shards' rounds as their nodes report them (server/metrics_log.py) and of the global
    student's distillation; None when a shard's figures lack them."""
    shards = [MetricsLog(RunFolder(f).metrics).compute_seconds() for f in shard_folders]
    if any(s is None for s in shards) or student.get("cpu_seconds") is None:
        return None
    return sum(shards) + student["cpu_seconds"]


# -- the global student ----------------------------------------------------------------------------------
def current_models(run_dir: Path) -> tuple[NebulaConfig, list[Path], Path]:
    """``(configuration, shard run folders, global student folder)`` of a sharded run's models now."""
    out = Path(run_dir)
    manifest = Manifest.read(out)
    return (
        NebulaConfig.from_flat(manifest.config),
        [out / f for f in manifest.folders if f],
        out / manifest.global_student,
    )


def predict(run_dir: Path, texts: list[str]) -> dict[str, np.ndarray]:
    """The current models' answers on ``texts`` (simulation/ensemble.py, ``predict``): ``teacher`` the shard
    teachers' ensemble ``(N, C)`` probabilities, ``student`` the global student's ``(N, C)`` logits."""
    return ensemble.predict(*current_models(run_dir), texts)


# -- a sharded run and a forgetting ---------------------------------------------------------------------
def run_sharded(
    config: NebulaConfig,
    *,
    on_round: Callable[[int, dict], None] | None = None,
    workers: int | None = None,
    verbose: bool = False,
) -> dict:
    """Run every shard, then distil the global student (module docstring); returns what ``results.json`` holds."""
    shards = config.federation.shard_count()
    if shards is None:
        raise ValueError(f"federation.isolation is {config.federation.isolation!r}, not sharded:S")
    if config.federation.resume or config.federation.unlearn_key:
        raise ValueError("federation.resume and federation.unlearn_key are not built for sharded:S")
    out = Path(config.federation.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "unlearning", ignore_errors=True)  # an earlier run's forgettings: of other models
    manifest = Manifest(
        level=config.federation.isolation,
        seed=config.data.seed,
        assignment=assign(config.data.num_clients, shards),
        excluded=sorted(config.federation.excluded()),
        folders=[None] * shards,
        config=config.to_flat(),
    )
    manifest.folders = [f"shard-{k}" if manifest.members(k) else None for k in range(shards)]
    manifest.write(out)
    runs = [
        run_shard(config, k, manifest.members(k), out / folder, on_round=on_round, workers=workers, verbose=verbose)
        for k, folder in enumerate(manifest.folders)
        if folder is not None
    ]
    student = ensemble.distil_global_student(config, [r.folder for r in runs], out / GLOBAL_STUDENT)
    results = _results(config, runs, student)
    write_results(out, results)
    return results


def _results(config: NebulaConfig, runs: Sequence[ShardRun], student: dict) -> dict:
    from nebula.common.federation_data import build_federation_data

    data = build_federation_data(config.data)
    shards = [
        {
            "shard": r.shard,
            "clients": r.clients,
            "folder": r.folder.name,
            "teacher_acc": acc,
            "client_rounds": client_rounds(r.folder),
            "seconds": r.seconds,
            "history": r.history,
        }
        for r, acc in zip(runs, student["teacher_accs"], strict=True)
    ]
    seconds = sum(r.seconds for r in runs) + student["seconds"]
    total = {
        "client_rounds": sum(s["client_rounds"] for s in shards),
        "seconds": seconds,
        "compute_seconds": compute_seconds([r.folder for r in runs], student),
    }
    return {
        "level": config.federation.isolation,
        "shards": shards,
        "global_student": student,
        "total": total,
        "majority_rate": majority_rate(data.labels(data.test)),
        "config": config.to_flat(),
    }


def forget(
    run_dir: Path,
    client_id: str,
    *,
    on_round: Callable[[int, dict], None] | None = None,
    workers: int | None = None,
) -> dict:
    """Forget ``client_id`` from the sharded run in ``run_dir``: retrain its shard without it, distil the global
    student again (module docstring, 3). Returns the cost, also written to ``unlearning/<client>/forget.json``;
    a client already forgotten returns the cost recorded then. ValueError for a client that never took part."""
    out = Path(run_dir)
    manifest, request = Manifest.read(out), out / "unlearning" / client_id
    if client_id in manifest.forgotten:
        return json.loads((request / FORGET_JSON).read_text(encoding="utf-8"))
    shard = manifest.assignment.get(client_id)
    if shard is None or client_id not in manifest.members(shard):
        raise ValueError(f"{client_id} took no part in the sharded run {out} (clients: {sorted(manifest.assignment)})")
    config = NebulaConfig.from_flat(manifest.config)
    before = [out / f if f is not None else None for f in manifest.folders]
    remaining = [c for c in manifest.members(shard) if c != client_id]
    t0 = time.perf_counter()
    folders, rerun = list(before), None
    folders[shard] = request / f"shard-{shard}" if remaining else None
    if remaining:  # else the shard is empty now: the ensemble goes on without it
        rerun = run_shard(config, shard, remaining, folders[shard], on_round=on_round, workers=workers)
    student = ensemble.distil_global_student(config, [f for f in folders if f is not None], request / GLOBAL_STUDENT)
    full = [client_rounds(f, without=client_id) for f in before if f is not None]
    original = json.loads((out / RESULTS_JSON).read_text(encoding="utf-8"))["total"]
    cost = {
        "client": client_id,
        "isolation": manifest.level,
        "mode": SHARD_RETRAIN,
        "exact": True,
        "exactness": "the client's shard trained again from scratch without it and the global student distilled "
        "again from the shard teachers: the models of a sharded run from scratch without the client (deterministic "
        "rounds; tests/simulation/test_sharded.py checks it bit for bit)",
        "shard": shard,
        "shard_clients": remaining,
        "client_rounds": client_rounds(rerun.folder) if rerun else 0,
        "seconds": time.perf_counter() - t0,
        "shard_seconds": rerun.seconds if rerun else 0.0,
        "distil_seconds": student["seconds"],
        "compute_seconds": compute_seconds([rerun.folder] if rerun else [], student),
        "full_retrain": {
            "client_rounds": sum(full),
            "seconds": original["seconds"],
            "compute_seconds": original.get("compute_seconds"),
            "how": "every shard again without the client: the run's own client-rounds less the client's, and the "
            "run's seconds (its shards and distillation, measured when it ran)",
        },
        "global_student": student,
    }
    _write_atomic(request / FORGET_JSON, json.dumps(cost, indent=2, default=float) + "\n")
    manifest.forgotten.append(client_id)
    manifest.folders = [None if f is None else RunFolder(out).relative(f) for f in folders]
    manifest.global_student = RunFolder(out).relative(request / GLOBAL_STUDENT)
    manifest.write(out)
    return cost


# -- the results table -------------------------------------------------------------------------------------
def table_rows(results: dict) -> list[dict]:
    """The rows of simulation/report.py's table: one per shard (its own teacher and student), then the sharded
    federation (teacher: the shard teachers' ensemble; global student: the one distilled from it)."""
    from nebula.simulation.report import federation_row

    aggregation = results["config"]["federation.aggregation"]
    rows, sizes = [], []
    for shard in results["shards"]:
        row = federation_row(shard["history"], aggregation=aggregation)
        rows.append(
            row | {"method": f"shard-{shard['shard']} ({', '.join(shard['clients'])})", "seconds": shard["seconds"]}
        )
        sizes.append(len(shard["clients"]))
    student = results["global_student"]

    def weighted(key: str) -> float | None:  # the mean over clients of a per-shard mean
        pairs = [(r[key], n) for r, n in zip(rows, sizes, strict=True) if r.get(key) is not None]
        return float(np.average([v for v, _ in pairs], weights=[n for _, n in pairs])) if pairs else None

    rows.append(
        {
            "method": f"nebula FD {results['level']} ({aggregation}, ensemble)",
            "mean client acc": weighted("mean client acc"),
            "mean client F1": weighted("mean client F1"),
            "min client": min((r["min client"] for r in rows if r.get("min client") is not None), default=None),
            "client own-split acc": weighted("client own-split acc"),
            "teacher": student["ensemble_acc"],
            "global student": student["student_acc"],
            "global student F1": student["student_f1"],
            "up B/client/round": weighted("up B/client/round"),
            "down B/client/round": weighted("down B/client/round"),
            "seconds": results["total"]["seconds"],
            "global student top share": student["student_top_share"],
        }
    )
    return rows


def write_results(out: Path, results: dict, extra_rows: Sequence[dict] = ()) -> str:
    """``results.md`` (the table, ``extra_rows`` such as baselines under it) and ``results.json`` in ``out``;
    returns the Markdown."""
    from nebula.simulation.report import format_table

    shards = "; ".join(f"shard-{s['shard']}: {', '.join(s['clients'])}" for s in results["shards"])
    text = (
        f"{results['level']} ({RULE}): {shards}. Teacher of the last row: the shard teachers' ensemble.\n\n"
        + format_table([*table_rows(results), *extra_rows], majority=results["majority_rate"])
    )
    (Path(out) / RESULTS_MD).write_text(text + "\n", encoding="utf-8")
    body = {**results, "table": [*table_rows(results), *extra_rows]}
    _write_atomic(Path(out) / RESULTS_JSON, json.dumps(body, indent=2, default=float) + "\n")
    return text
