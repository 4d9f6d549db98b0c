"""``nebula unlearn benchmark``: forget one client of a simulated federation with every mode, and
compare the teacher and global student with a federation retrained without it (the verification table).

1. **original**: the federation runs (preset ``benchmark`` by default: 10 clients) into ``OUT/original``;
2. the client to forget is chosen (default: the one with the most private training examples);
3. **each mode**: the run folder (ledger and checkpoints) is copied to ``OUT/modes/<mode>`` and a request
   is carried out there by the service's own executor (request store, mode, signed certificate in
   ``OUT/modes/<mode>/certificates``), timed from start to signed certificate;
4. **retrained**: the same federation runs again into ``OUT/retrained``, its fresh ledger pre-marked with
   ``Ledger.purge_client`` so that the federation never selects the client (server/federation.py drops
   forgotten clients every round); same data split, seeds and configuration;
   With ``repeat_retraining`` it runs a second time into ``OUT/retrained-again``: the same configuration
   and seeds, so the gaps of that row against the first are the retraining's own run-to-run spread
   (two runs of one configuration are not bit-identical: the server sums replies in client order, but
   some clients' answers still differ from round 2 on, not yet traced), the floor under which no
   mode's gap means anything;
5. teacher and global student of each are evaluated on the forgotten client's training examples
   (members), its held-out examples (non-members from the same distribution), the other clients'
   training examples and the global test set (server/unlearning/verification.py); the table goes to
   stdout and ``OUT/unlearning.md``, the figures to ``OUT/unlearning.json``.

Seconds: a mode's wall time (loading the base models included) against the retraining federation's
wall time (Ray start included); both on the same machine, one after the other.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nebula.common.canary import Canary, triggered
from nebula.common.config import NebulaConfig
from nebula.common.run_folder import RunFolder
from nebula.server.unlearning.fast_correction import CorrectionBudget
from nebula.simulation.unlearning_levels import level_summary

log = logging.getLogger(__name__)

ORIGINAL, RETRAINED, RETRAINED_AGAIN = "original", "retrained", "retrained-again"
CANARY_SET = "canary"  # the evaluator's set of triggered test inputs (data.canary)
ORDER = (
    "purge",
    "reaggregate",
    "exact-replay",
    "fast-correction",
)  # table order: ledger-only first, then the model modes


@dataclass(frozen=True)
class UnlearningBenchmark:
    """What the benchmark runs: the federation's configuration and the unlearning choices."""

    config: NebulaConfig  # the federation (its federation.output_dir is ignored: see ``out``)
    out: Path  # OUT: original/, modes/<mode>/, retrained/, unlearning.md, unlearning.json
    client: str = ""  # client id to forget; "" = the client with the most private training examples
    modes: tuple[str, ...] = ()  # () = every registered mode
    correction_teacher_steps: int = CorrectionBudget.teacher_steps
    correction_student_steps: int = CorrectionBudget.student_steps
    workers: int | None = None  # simulation workers (default: CPU cores)
    repeat_retraining: bool = False  # retrain a second time (OUT/retrained-again): the run-to-run spread


@dataclass
class BenchmarkResult:
    client: str
    rows: list[dict]
    table: str
    seconds: dict[str, float] = field(default_factory=dict)
    certificates: dict[str, str] = field(default_factory=dict)  # mode -> certificate path
    summary: dict = field(default_factory=dict)  # simulation/unlearning_levels.py: the per-mode figures


def client_with_most_data(config: NebulaConfig) -> str:
    from nebula.common.federation_data import build_federation_data

    data = build_federation_data(config.data)
    return f"client-{int(np.argmax([len(c.train) for c in data.clients]))}"


def copy_run(src: Path, dst: Path) -> None:
    """The ledger (through SQLite's backup: consistent even with a WAL) and the checkpoints of a run folder."""
    dst.mkdir(parents=True, exist_ok=True)
    src_run, dst_run = RunFolder(src), RunFolder(dst)
    source, target = sqlite3.connect(src_run.ledger), sqlite3.connect(dst_run.ledger)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    shutil.copytree(src_run.checkpoints, dst_run.checkpoints)


def _federate(
    config: NebulaConfig,
    out: Path,
    *,
    workers: int | None,
    forget: str = "",
    on_round: Callable[[dict], None] | None = None,
) -> float:
    import dataclasses

    from nebula.server.ledger import Ledger
    from nebula.simulation.engine import simulate

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if forget:  # the retrained federation: the client is forgotten before round 1
        ledger = Ledger(RunFolder(out).ledger)
        ledger.purge_client(forget, request_id="benchmark-retrain-without-client")
        ledger.close()
    config = dataclasses.replace(config, federation=dataclasses.replace(config.federation, output_dir=str(out)))
    t0 = time.perf_counter()
    simulate(config, on_round=on_round, workers=workers)
    return time.perf_counter() - t0


def _forget(folder: Path, client: str, mode: str, bench: UnlearningBenchmark) -> tuple[float, Path]:
    """Carry out one request on a copied run folder through the executor; returns (seconds, certificate)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from nebula.server.ledger import Ledger
    from nebula.server.unlearning.executor import Executor
    from nebula.server.unlearning.fast_correction import FastCorrectionMode
    from nebula.server.unlearning.requests import RequestStore

    run_folder = RunFolder(folder)
    ledger_path = run_folder.ledger
    store = RequestStore(ledger_path)
    budget = CorrectionBudget(bench.correction_teacher_steps, bench.correction_student_steps)
    executor = Executor(
        ledger=Ledger(ledger_path),
        store=store,
        signing_key=Ed25519PrivateKey.generate(),
        certificates_dir=run_folder.certificates,
        modes={FastCorrectionMode.name: FastCorrectionMode(budget)},
    )
    request, _ = store.submit(
        client_id=client,
        reason="nebula unlearn benchmark",
        mode=mode,
        idempotency_key=f"benchmark-{mode}",
        operator_key="benchmark",
    )
    t0 = time.perf_counter()
    (done,) = executor.run_pending()
    seconds = time.perf_counter() - t0
    if done.status != "done":
        raise RuntimeError(f"{mode}: request {done.request_id} {done.status}: {done.error}")
    executor.ledger.close()
    store.close()
    return seconds, run_folder.certificate(request.request_id)


class _Evaluator:
    """Logits of a run folder's current teacher and global student on the verification sets (cached by state hash)."""

    def __init__(self, config: NebulaConfig, client: str) -> None:
        from nebula.common.federation_data import build_federation_data

        self.config, self.data = config, build_federation_data(config.data)
        k = int(client.rsplit("-", 1)[1])
        others = np.sort(np.concatenate([c.train for i, c in enumerate(self.data.clients) if i != k]))
        self.index = {
            "forgotten": self.data.clients[k].train,
            "forgotten_holdout": self.data.clients[k].holdout,
            "others": others,
            "test": self.data.test,
        }
        self.labels = {name: self.data.labels(idx) for name, idx in self.index.items()}
        self.texts = {name: self.data.texts(idx) for name, idx in self.index.items()}
        self.canary = Canary.parse(config.data.canary)
        if self.canary is not None:  # the test inputs of other classes, with the trigger (common/canary.py)
            keep = self.index["test"][self.labels["test"] != self.canary.target]
            self.texts[CANARY_SET] = [triggered(t) for t in self.data.texts(keep)]
        self._cache: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    def logits(self, folder: Path) -> dict[str, dict[str, np.ndarray]]:
        from nebula.learning.models import load_trainable_state
        from nebula.learning.training import encode, predict_logits
        from nebula.server.ledger import Ledger
        from nebula.server.unlearning import models as store
        from nebula.server.unlearning.arithmetic import state_sha256

        ledger = Ledger(RunFolder(folder).ledger)
        try:
            run = store.run_of(ledger, folder)
        finally:
            ledger.close()
        states = store.current_states(run)[:2]
        teacher, student, _ = store.learners(run)
        out = {}
        for name, learner, state in (("teacher", teacher, states[0]), ("student", student, states[1])):
            key = (name, state_sha256(state))
            if key not in self._cache:
                load_trainable_state(learner.model, state)
                self._cache[key] = {
                    s: predict_logits(
                        learner.model, encode(learner.tokenizer, texts, max_length=self.config.data.max_length)
                    )
                    for s, texts in self.texts.items()
                }
            out[name] = self._cache[key]
        return out


def run_benchmark(
    bench: UnlearningBenchmark, *, on_round: Callable[[dict], None] | None = None, say: Callable[[str], None] = print
) -> BenchmarkResult:
    """Steps 1-5 of the module docstring; returns the rows and the Markdown table (also written to OUT)."""
    from nebula.server.unlearning import available_modes
    from nebula.server.unlearning.verification import markdown_table, verification_rows

    modes = bench.modes or tuple(
        sorted(available_modes(), key=lambda m: (ORDER.index(m) if m in ORDER else len(ORDER), m))
    )
    client = bench.client or client_with_most_data(bench.config)
    seconds: dict[str, float] = {}
    say(f"[1/4] original federation -> {bench.out / ORIGINAL}")
    seconds[ORIGINAL] = _federate(bench.config, bench.out / ORIGINAL, workers=bench.workers, on_round=on_round)
    say(f"      {seconds[ORIGINAL]:.0f} s; forgetting {client}")
    certificates = {}
    for mode in modes:
        folder = bench.out / "modes" / mode
        if folder.exists():
            shutil.rmtree(folder)
        copy_run(bench.out / ORIGINAL, folder)
        seconds[mode], certificates[mode] = _forget(folder, client, mode, bench)
        say(f"[2/4] {mode}: {seconds[mode]:.1f} s, certificate {certificates[mode]}")
    say(f"[3/4] retraining without {client} -> {bench.out / RETRAINED}")
    seconds[RETRAINED] = _federate(
        bench.config, bench.out / RETRAINED, workers=bench.workers, forget=client, on_round=on_round
    )
    say(f"      {seconds[RETRAINED]:.0f} s")
    folders = {
        ORIGINAL: bench.out / ORIGINAL,
        **{m: bench.out / "modes" / m for m in modes},
        RETRAINED: bench.out / RETRAINED,
    }
    if bench.repeat_retraining:
        say(f"[3/4] retraining again, same configuration -> {bench.out / RETRAINED_AGAIN}")
        seconds[RETRAINED_AGAIN] = _federate(
            bench.config, bench.out / RETRAINED_AGAIN, workers=bench.workers, forget=client, on_round=on_round
        )
        say(f"      {seconds[RETRAINED_AGAIN]:.0f} s")
        folders[RETRAINED_AGAIN] = bench.out / RETRAINED_AGAIN
    say("[4/4] evaluating teacher and global student of each")
    evaluator = _Evaluator(bench.config, client)
    logits = {variant: evaluator.logits(folder) for variant, folder in folders.items()}
    rows = verification_rows(logits, evaluator.labels, seconds={k: v for k, v in seconds.items() if k != ORIGINAL})
    table = markdown_table(rows)
    sizes = {name: len(idx) for name, idx in evaluator.index.items()}
    header = (
        f"Forgetting {client} ({sizes['forgotten']} training examples, {sizes['forgotten_holdout']} held out as "
        f"non-members; {sizes['others']} of the other clients; {sizes['test']} test). Gaps against the retrained "
        f"model; seconds: the mode's request, and the retraining federation ({seconds[RETRAINED]:.0f} s; the "
        f"original took {seconds[ORIGINAL]:.0f} s)."
    )
    text = header + "\n\n" + table
    summary = level_summary(folders, logits, rows, certificates, seconds, canary=evaluator.canary)
    _write_results(bench.out, client, sizes, seconds, rows, certificates, text, bench.config, summary)
    return BenchmarkResult(client, rows, text, seconds, {m: str(p) for m, p in certificates.items()}, summary)


def _write_results(
    out: Path,
    client: str,
    sizes: dict[str, int],
    seconds: dict[str, float],
    rows: list,
    certificates: dict,
    text: str,
    config: NebulaConfig,
    summary: dict,
) -> None:
    """The benchmark's files: ``unlearning.md`` (caption and table) and ``unlearning.json``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "unlearning.md").write_text(text + "\n", encoding="utf-8")
    (out / "unlearning.json").write_text(
        json.dumps(
            {
                "client": client,
                "sizes": sizes,
                "seconds": seconds,
                "rows": rows,
                "certificates": {m: str(p) for m, p in certificates.items()},
                "config": config.to_flat(),
                "summary": summary,
            },
            indent=2,
            default=float,
        )
        + "\n",
        encoding="utf-8",
    )
