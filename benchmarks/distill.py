"""Distillation benchmark: how much of a strong teacher an exported MiniLM-L3 keeps, recipe by recipe.

Per seed (``--seeds``; the seed draws the split, the LoRA initialisations and the training order):

1. the dataset splits into a test set (``--test-size``), an unlabelled pool (``--pool-size``; its labels are
   never read) and labelled training rows (``--train-size``): :func:`nebula.common.data.split_dataset`;
2. the teacher (``--teacher``, MPNet by default) + LoRA is trained on the labelled rows (cross-entropy); its
   logits and the mean-pooled hidden states of the layers the student maps to are computed on the pool once
   and cached in the work folder (``--work``), with the teacher's adapter;
3. variants that go through the assistant train it first: MiniLM-L6 + LoRA distilled from the teacher's
   logits on the pool (KL), once per seed;
4. each variant distils a MiniLM-L3 + LoRA student on the pool (:func:`distill_student`, the terms of
   :func:`nebula.learning.deep_distill.deep_distill_loss`; a variant with intermediate-layer terms uses them for
   every epoch but the last, which fine-tunes on the logits alone: :func:`schedule_for`), exports it (merge,
   vocabulary pruned to the train and pool texts, ONNX, ``cpu-int8``:
   :func:`nebula.deploy.export.export.export_adapter`) and measures the package with onnxruntime on the test
   set (:func:`nebula.deploy.export.report.export_row`); the fp32 teacher is measured in PyTorch (merged) on
   the same texts with the same threads (``reference_row``).

Variants (:data:`VARIANTS`): ``logits`` (KL on the teacher's logits), ``hidden`` (+ hidden states: mean-pooled
through a learned projection where the tokenisers differ, MPNet -> MiniLM; token by token where they match),
``assistant-logits`` (teacher -> L6 -> L3, KL at both steps: the assistant alone), ``relation`` (teacher -> L6
by KL, then L6 -> L3 by KL + self-attention relations, MiniLM v2: token-level terms need the assistant's
tokeniser, which is the student's) and ``assistant`` (the same with token-level hidden states as well).

Run from the repository root, under the shared lock (it trains real models)::

    HF_HUB_OFFLINE=1 flock /tmp/nebula-heavy.lock .venv/bin/python benchmarks/distill.py --dataset tweets \\
        --seeds 0,1,2 --train-size 2000 --pool-size 2000 --test-size 1000

It prints a line per finished (variant, seed) cell and, at the end, a Markdown table. The JSON
(``--out``, default benchmarks/results/distill-<dataset>.json) is rewritten after every cell; a cell already in
it is skipped, so an interrupted run continues where it stopped (other settings are refused, not mixed in).
The BBC dataset has 2225 articles: use smaller sizes there (e.g. train 800, pool 1000, test 400).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nebula.common.provenance import StoredResultMismatch, provenance, stored_result

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Variant:
    route: str  # "direct": teacher -> student; "assistant": teacher -> assistant (KL) -> student
    terms: dict[str, float]  # LossWeights of the student's step
    what: str


VARIANTS = {
    "logits": Variant("direct", {"kd": 1.0}, "KL on the teacher's logits"),
    "hidden": Variant("direct", {"kd": 1.0, "hidden": 1.0}, "+ hidden states (pooled across tokenisers)"),
    "assistant-logits": Variant("assistant", {"kd": 1.0}, "teacher -> L6 -> L3, KL at both steps"),
    "relation": Variant("assistant", {"kd": 1.0, "relation": 1.0}, "teacher -> L6 (KL) -> L3: KL + relations"),
    "assistant": Variant(
        "assistant", {"kd": 1.0, "hidden": 1.0, "relation": 1.0}, "teacher -> L6 (KL) -> L3: KL + hidden + relations"
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="tweets", help="builtin dataset: tweets or bbc")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--teacher", default="mpnet", help="teacher base model (builtin name or folder)")
    p.add_argument("--assistant", default="minilm-l6", help="assistant base model, same tokeniser as the student")
    p.add_argument("--student", default="minilm-l3", help="student base model")
    p.add_argument("--train-size", type=int, default=2000, help="labelled rows the teacher trains on")
    p.add_argument("--pool-size", type=int, default=2000, help="unlabelled rows the students distil on")
    p.add_argument("--test-size", type=int, default=1000, help="held-out rows every model is measured on")
    p.add_argument("--epochs", type=int, default=3, help="epochs of the assistant and of each student")
    p.add_argument("--teacher-epochs", type=int, default=3, help="epochs of the teacher over the labelled rows")
    p.add_argument("--max-length", type=int, default=64, help="tokens per input")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate of the assistant and the students")
    p.add_argument("--teacher-lr", type=float, default=1e-3, help="AdamW learning rate of the teacher")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--temperature", type=float, default=2.0, help="T of the KL terms")
    p.add_argument("--relation-heads", type=int, default=12, help="relation heads of the relation term (MiniLM v2)")
    p.add_argument("--threads", type=int, default=1, help="threads while timing (onnxruntime and torch alike)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per latency figure")
    p.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/distill-<dataset>.json)")
    p.add_argument("--work", type=Path, default=None, help="cached teachers and exports (default: a temp folder)")
    args = p.parse_args(argv)
    args.out = args.out or ROOT / "benchmarks" / "results" / f"distill-{args.dataset}.json"
    args.work = args.work or Path(tempfile.gettempdir()) / f"nebula-distill-{args.dataset}"
    for name in ("train_size", "pool_size", "test_size", "epochs", "teacher_epochs", "max_length", "batch_size",
                 "relation_heads", "threads", "repeats"):  # fmt: skip
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    unknown = [v for v in args.variants.split(",") if v and v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    return args


SETTINGS = (
    "dataset", "teacher", "assistant", "student", "train_size", "pool_size", "test_size", "epochs", "teacher_epochs",
    "max_length", "lr", "teacher_lr", "batch_size", "temperature", "relation_heads", "threads", "repeats",
)  # fmt: skip


# --- data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkData:
    """One seed's split: labelled train rows, the unlabelled pool and the test set (``EvalSplit``)."""

    train_texts: list[str]
    train_labels: np.ndarray  # (N_train,)
    pool_texts: list[str]
    test: object  # nebula.deploy.export.report.EvalSplit
    label_names: tuple[str, ...]


def benchmark_data(dataset: str, *, train: int, pool: int, test: int, seed: int) -> BenchmarkData:
    from nebula.common.data import load_dataset, split_dataset
    from nebula.deploy.export.report import EvalSplit

    data = load_dataset(dataset)
    test_ids, pool_ids, private = split_dataset(len(data), test=test, public=pool, seed=seed)
    if train > len(private):
        raise SystemExit(f"error: --train-size {train} but {dataset} has {len(private)} rows after test and pool")
    texts = lambda ids: [data.texts[i] for i in ids]  # noqa: E731
    source = {
        "split": "benchmark",
        "dataset": dataset,
        "test_size": test,
        "seed": seed,
        "description": f"{dataset}, {test} texts held out by benchmarks/distill.py (seed {seed})",
    }
    split = EvalSplit(texts(test_ids), data.labels[test_ids], len(data.label_names), source)
    train_ids = private[:train]
    return BenchmarkData(texts(train_ids), data.labels[train_ids], texts(pool_ids), split, data.label_names)


# --- teachers on the pool ---------------------------------------------------------------------


@dataclass
class TeacherBatch:
    out: object  # .logits (b, C) and, where needed, .hidden_states
    qkv: dict | None  # capture_qkv's states, for the relation term
    pool: str  # "tokens" or "mean": how the hidden term compares
    mask: object  # the teacher's (b, L') mask where pool == "mean", else None


class CachedTeacher:
    """A teacher whose tokeniser differs from the student's: only its outputs on the pool, computed once.

    ``logits`` (N, C); ``pooled`` (N, P, d): mean-pooled hidden states of the teacher layers that ``mapping``
    (student layer -> teacher layer) names, in its order.
    """

    def __init__(self, logits: np.ndarray, pooled: np.ndarray, mapping: tuple[tuple[int, int], ...]) -> None:
        self.logits, self.pooled, self.mapping = logits, pooled, mapping
        self.width = pooled.shape[-1]

    def batch(self, index: np.ndarray, ids, mask, *, qkv: bool) -> TeacherBatch:
        import torch
        from transformers.modeling_outputs import SequenceClassifierOutput

        if qkv:
            raise ValueError("token-level terms need the teacher's tokeniser to be the student's: use the assistant")
        layers = max(n for _, n in self.mapping) + 1
        hidden: list = [None] * layers  # only the mapped layers are read: each (b, 1, d), one pooled "token"
        for k, (_, n) in enumerate(self.mapping):
            hidden[n] = torch.from_numpy(self.pooled[index, k])[:, None, :]
        out = SequenceClassifierOutput(logits=torch.from_numpy(self.logits[index]), hidden_states=tuple(hidden))
        return TeacherBatch(out, None, "mean", torch.ones(len(index), 1, dtype=torch.long))


class LiveTeacher:
    """A teacher with the student's tokeniser (the assistant), run on every batch: token-level terms apply."""

    def __init__(self, model, mapping: tuple[tuple[int, int], ...]) -> None:
        self.model, self.mapping = model.eval(), mapping
        self.width = model.config.hidden_size

    def batch(self, index: np.ndarray, ids, mask, *, qkv: bool) -> TeacherBatch:
        import torch

        from nebula.learning.deep_distill import capture_qkv

        with torch.no_grad(), capture_qkv(self.model) if qkv else nullcontext() as states:
            out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        return TeacherBatch(out, {k: list(v) for k, v in states.items()} if qkv else None, "tokens", None)


def pooled_outputs(model, rows: list[list[int]], layers: tuple[int, ...], *, pad_id: int, batch_size: int = 64):
    """Logits (N, C) and mean-pooled hidden states of ``layers`` (N, P, d) of ``model`` on token ``rows``
    (batched by length, so a batch pads little; returned in the order of ``rows``)."""
    import torch

    from nebula.client.runtime.package import pad_batch

    model.eval()
    order = np.argsort([len(r) for r in rows], kind="stable")
    logits, pooled = [], []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = [rows[i] for i in order[start : start + batch_size]]
            ids, mask = (torch.from_numpy(a) for a in pad_batch(batch, pad_id=pad_id))
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            weights = (mask / mask.sum(1, keepdim=True))[..., None]  # (b, L, 1)
            pooled.append(torch.stack([(out.hidden_states[n] * weights).sum(1) for n in layers], 1))  # (b, P, d)
            logits.append(out.logits.float())
    restore = np.argsort(order)
    return torch.cat(logits).numpy()[restore], torch.cat(pooled).float().numpy()[restore]


# --- one distillation run ----------------------------------------------------------------------


def schedule_for(terms: dict[str, float], epochs: int):
    """The :class:`~nebula.learning.schedule.DistillSchedule` of a variant: ``terms`` for every epoch but the last,
    which fine-tunes on the logits alone (TinyBERT's two stages); a logits-only variant, or a single epoch, is
    ``terms`` throughout."""
    from nebula.learning.schedule import DistillSchedule, LossWeights

    finetune = 1 if set(terms) - {"kd"} and epochs > 1 else 0
    return DistillSchedule(
        warmup_epochs=0, distill_epochs=epochs - finetune, finetune_epochs=finetune,
        distill=LossWeights(**{"kd": 0.0, **terms}), finetune=LossWeights(kd=1.0),
    )  # fmt: skip


def distill_student(
    model,
    rows: list[list[int]],
    teacher: CachedTeacher | LiveTeacher,
    *,
    schedule,
    lr: float,
    batch_size: int,
    temperature: float,
    relation_heads: int,
    pad_id: int,
    seed: int,
) -> dict[str, dict[str, float]]:
    """Distil ``model`` (the student, trainable parameters only) on the pool's token ``rows`` from ``teacher``.

    Each epoch's loss is :func:`~nebula.learning.deep_distill.deep_distill_loss` with the weights ``schedule``
    (a :class:`~nebula.learning.schedule.DistillSchedule`) gives that epoch and the teacher's layer map; where
    the widths differ a :class:`~nebula.learning.deep_losses.HiddenProjection` trains along and is dropped
    afterwards. Returns, per phase that ran, each term's mean over its batches.
    """
    import torch

    from nebula.learning.deep_losses import HiddenProjection

    width = model.config.hidden_size
    seen: dict[str, dict[str, list[float]]] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the projection's initialisation and the student's dropout
        projection = None
        if schedule.uses("hidden") and width != teacher.width:
            projection = HiddenProjection(width, teacher.width, len(teacher.mapping))
        params = [p for p in model.parameters() if p.requires_grad]
        params += list(projection.parameters()) if projection is not None else []
        opt, rng = torch.optim.AdamW(params, lr=lr), np.random.default_rng(seed)
        model.train()
        for epoch in range(schedule.total_epochs):
            step = dict(weights=schedule.weights_at(epoch), projection=projection, temperature=temperature,
                        relation_heads=relation_heads, pad_id=pad_id)  # fmt: skip
            terms = seen.setdefault(schedule.phase_at(epoch), {})
            for index in np.array_split(rng.permutation(len(rows)), max(1, -(-len(rows) // batch_size))):
                loss = _student_step(model, opt, [rows[i] for i in index], index, teacher, **step)
                for name, value in loss.terms.items():
                    terms.setdefault(name, []).append(value)
    model.eval()
    return {phase: {n: float(np.mean(v)) for n, v in terms.items()} for phase, terms in seen.items()}


def _student_step(model, opt, batch, index, teacher, *, weights, projection, temperature, relation_heads, pad_id):
    """One optimizer step of the student on ``batch`` (token rows, pool positions ``index``); returns its loss."""
    import torch

    from nebula.client.runtime.package import pad_batch

    ids, mask = (torch.from_numpy(a) for a in pad_batch(batch, pad_id=pad_id))  # (b, L) each
    t = teacher.batch(index, ids, mask, qkv=weights.relation > 0)
    loss = _student_loss(
        model, ids, mask, t, weights=weights, mapping=teacher.mapping, projection=projection,
        temperature=temperature, relation_heads=relation_heads,
    )  # fmt: skip
    opt.zero_grad(set_to_none=True)
    loss.total.backward()
    opt.step()
    return loss


def _student_loss(model, ids, mask, t: TeacherBatch, *, weights, mapping, projection, temperature, relation_heads):
    """One batch's :class:`~nebula.learning.deep_distill.DeepLoss` of the student against the teacher batch ``t``."""
    from nebula.learning.deep_distill import capture_qkv, deep_distill_loss

    with capture_qkv(model) if weights.relation > 0 else nullcontext() as states:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=weights.hidden > 0)
    return deep_distill_loss(
        out, t.out, weights=weights, mapping=mapping, projection=projection, temperature=temperature,
        attention_mask=mask, student_qkv=states, teacher_qkv=t.qkv, relation_heads=relation_heads,
        hidden_pool=t.pool, teacher_attention_mask=t.mask,
    )  # fmt: skip


# --- a seed: teacher, assistant, variants ------------------------------------------------------


def fresh_learner(name: str, num_labels: int, seed: int):
    """``name`` + LoRA, the adapter at its seeded initial state (the process caches learners)."""
    from nebula.learning.models import LoraSpec, load_learner, load_trainable_state

    learner = load_learner(name, num_labels=num_labels, lora=LoraSpec(), seed=seed)
    load_trainable_state(learner.model, learner.init_state)
    return learner


def _pad(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def train_teacher(args, data: BenchmarkData, folder: Path, seed: int, student_layers: int) -> CachedTeacher:
    """The teacher trained on the labelled rows, as its adapter (``folder/teacher``) and its outputs on the pool
    (``folder/teacher-pool.npz``); read back, not trained again, where an earlier run left both."""
    from nebula.learning.deep_losses import layer_map
    from nebula.learning.models import save_adapter
    from nebula.learning.training import encode, fit

    cache = folder / "teacher-pool.npz"
    if not cache.is_file():
        teacher = fresh_learner(args.teacher, len(data.label_names), seed)
        train = encode(teacher.tokenizer, data.train_texts, max_length=args.max_length)
        fit(teacher.model, train, labels=data.train_labels, epochs=args.teacher_epochs, lr=args.teacher_lr,
            batch_size=args.batch_size, micro_batch_size=args.batch_size, seed=seed)  # fmt: skip
        save_adapter(teacher, folder / "teacher", label_names=data.label_names, note=_NOTE)
        mapping = layer_map(teacher.model.config.num_hidden_layers, student_layers)
        rows = encode(teacher.tokenizer, data.pool_texts, max_length=args.max_length).input_ids
        layers = tuple(n for _, n in mapping)
        logits, pooled = pooled_outputs(teacher.model, rows, layers, pad_id=_pad(teacher.tokenizer))
        tmp = folder / "teacher-pool.tmp.npz"
        np.savez(tmp, logits=logits, pooled=pooled, mapping=np.asarray(mapping))
        tmp.replace(cache)  # written last: its presence says the adapter is complete too
    stored = np.load(cache)
    return CachedTeacher(stored["logits"], stored["pooled"], tuple(map(tuple, stored["mapping"].tolist())))


_NOTE = "Trained by benchmarks/distill.py (a benchmark, not a federation)."


def train_assistant(args, data: BenchmarkData, folder: Path, seed: int, teacher: CachedTeacher, student_layers: int):
    """The assistant distilled from the teacher's logits on the pool (KL at T), as a :class:`LiveTeacher`, and its
    test accuracy; its trainable state is kept in ``folder/assistant.pt`` for a resumed run."""
    import torch

    from nebula.learning.deep_losses import layer_map
    from nebula.learning.losses import soft_targets
    from nebula.learning.models import load_trainable_state, trainable_state
    from nebula.learning.training import accuracy, encode, fit, predict_logits

    assistant = fresh_learner(args.assistant, len(data.label_names), seed)
    state = folder / "assistant.pt"
    if state.is_file():
        load_trainable_state(assistant.model, torch.load(state, weights_only=True))
    else:
        targets = soft_targets(torch.from_numpy(teacher.logits), temperature=args.temperature).numpy()  # (N, C)
        pool = encode(assistant.tokenizer, data.pool_texts, max_length=args.max_length)
        fit(assistant.model, pool, targets=targets, temperature=args.temperature, epochs=args.epochs, lr=args.lr,
            batch_size=args.batch_size, micro_batch_size=args.batch_size, seed=seed)  # fmt: skip
        torch.save(trainable_state(assistant.model), folder / "assistant.pt.tmp")
        (folder / "assistant.pt.tmp").replace(state)
    test = encode(assistant.tokenizer, data.test.texts, max_length=args.max_length)
    acc = accuracy(predict_logits(assistant.model, test), data.test.labels)
    mapping = layer_map(assistant.model.config.num_hidden_layers, student_layers)
    return LiveTeacher(assistant.model, mapping), acc


def direct_teacher(folder: Path, cached: CachedTeacher, student, texts: list[str], *, max_length: int):
    """The teacher as the direct variants see it: its cached outputs across tokenisers, the model itself where
    it tokenises ``texts`` (the pool) exactly as the student does (then token-level terms apply)."""
    from transformers import AutoTokenizer

    from nebula.deploy.export.merge import load_adapter_model
    from nebula.learning.deep_losses import layer_map

    ids = lambda tok: tok(texts, truncation=True, max_length=max_length)["input_ids"]  # noqa: E731
    if ids(AutoTokenizer.from_pretrained(folder / "teacher")) != ids(student.tokenizer):
        return cached
    model = load_adapter_model(folder / "teacher")[0]
    return LiveTeacher(model, layer_map(model.config.num_hidden_layers, student.model.config.num_hidden_layers))


def run_cell(args, data: BenchmarkData, name: str, teacher, student, folder: Path, seed: int, reference: dict):
    """One (variant, seed) cell: distil the student, export it, measure the package against the ``reference``
    row of the fp32 teacher (:func:`nebula.deploy.export.report.reference_row`)."""
    from nebula.client.runtime.predictor import EdgePredictor
    from nebula.deploy.export.export import ExportConfig, export_adapter
    from nebula.deploy.export.report import against_teacher, export_row
    from nebula.learning.models import load_trainable_state, save_adapter
    from nebula.learning.training import accuracy, encode, predict_logits

    t0 = time.perf_counter()
    variant = VARIANTS[name]
    load_trainable_state(student.model, student.init_state)
    rows = encode(student.tokenizer, data.pool_texts, max_length=args.max_length).input_ids
    losses = distill_student(
        student.model, rows, teacher, schedule=schedule_for(variant.terms, args.epochs), lr=args.lr,
        batch_size=args.batch_size, temperature=args.temperature, relation_heads=args.relation_heads,
        pad_id=_pad(student.tokenizer), seed=seed,
    )  # fmt: skip
    test = encode(student.tokenizer, data.test.texts, max_length=args.max_length)
    fp32 = accuracy(predict_logits(student.model, test), data.test.labels)
    out = folder / name
    shutil.rmtree(out, ignore_errors=True)
    save_adapter(student, out / "adapter", label_names=data.label_names, note=_NOTE)
    export_adapter(ExportConfig(
        adapter_dir=str(out / "adapter"), out=str(out / "export"), target="cpu-int8", max_length=args.max_length,
        prune_vocab_from=str(folder / "corpus.txt"), labels=tuple(data.label_names),
    ))  # fmt: skip
    predictor = EdgePredictor(out / "export", intra_op_threads=args.threads)
    _, row = export_row(predictor, out / "export", data.test.texts, data.test.labels, repeats=args.repeats)
    versus = against_teacher(row, reference)
    return {
        "variant": name, "seed": seed, "route": variant.route, "terms": variant.terms,
        "accuracy": row["accuracy"], "accuracy_fp32": fp32, "teacher_accuracy": reference["accuracy"],
        "teacher_share": versus["accuracy_kept"], "size_mb": row["size_mb"], "size_ratio": versus["smaller_x"],
        "latency_b1_ms": row["latency_b1_ms"], "latency_b32_ms": row["latency_b32_ms"],
        "batch1_speedup": versus["batch1_faster_x"],
        "batch32_speedup": reference["latency_b32_ms"] / row["latency_b32_ms"],
        "kept_vocab_size": predictor.manifest.kept_vocab_size,
        "outside_vocabulary": float(np.mean(predictor.outside_vocabulary(data.test.texts))),
        "losses": losses, "seconds": time.perf_counter() - t0,
    }  # fmt: skip


def run_seed(args, seed: int, names: list[str], state: dict, save):
    """Every cell of ``names`` for ``seed``, in order: the teacher (and the assistant) first, from the work folder's
    cache where an earlier run left them. Yields each finished cell after ``save()`` stored it in ``state``."""
    from nebula.deploy.export.report import reference_row

    data = benchmark_data(args.dataset, train=args.train_size, pool=args.pool_size, test=args.test_size, seed=seed)
    folder = args.work / f"seed-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.txt").write_text(
        "\n".join(" ".join(t.split()) for t in data.train_texts + data.pool_texts) + "\n", encoding="utf-8"
    )  # the texts a device of this task would see: the pruned vocabulary keeps their tokens
    student = fresh_learner(args.student, len(data.label_names), seed)
    layers = student.model.config.num_hidden_layers
    cached = train_teacher(args, data, folder, seed, layers)
    key = f"seed {seed}"
    if key not in state["teachers"]:
        name = f"teacher {args.teacher} fp32 (PyTorch, merged)"
        state["teachers"][key] = reference_row(
            name, folder / "teacher", data.test, None, max_length=args.max_length, threads=args.threads,
            repeats=args.repeats,
        )  # fmt: skip
        save()
    reference = state["teachers"][key]
    direct = assistant = None
    for name in names:
        if VARIANTS[name].route == "direct":
            direct = direct or direct_teacher(folder, cached, student, data.pool_texts, max_length=args.max_length)
            teacher = direct
        else:
            if assistant is None:
                assistant, reference["assistant_accuracy"] = train_assistant(args, data, folder, seed, cached, layers)
            teacher = assistant
        cell = run_cell(args, data, name, teacher, student, folder, seed, reference)
        state["cells"][cell_key(name, seed)] = cell
        save()
        yield cell


def cell_key(variant: str, seed: int) -> str:
    return f"{variant} | seed {seed}"


# --- results ----------------------------------------------------------------------------------


def stats(values: list[float]) -> dict:
    """Mean, sample standard deviation (None for one value) and the values, seed by seed."""
    return {
        "mean": float(np.mean(values)),
        "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
        "per_seed": [float(v) for v in values],
    }


_SUMMED = ("accuracy", "accuracy_fp32", "teacher_share", "size_mb", "size_ratio", "batch1_speedup",
           "batch32_speedup", "latency_b1_ms", "latency_b32_ms")  # fmt: skip


def summarise(cells: dict, teachers: dict, names: list[str]) -> dict:
    """Per variant: each figure's :func:`stats` over the seeds it has, and which targets the means meet; the fp32
    teacher's and the assistant's figures; each deep variant against ``logits`` (paired by seed)."""
    from nebula.deploy.export.report import TARGETS

    variants = {}
    for name in names:
        found = sorted((c for c in cells.values() if c["variant"] == name), key=lambda c: c["seed"])
        if not found:
            continue
        summary = {"what": VARIANTS[name].what, "route": VARIANTS[name].route, "terms": VARIANTS[name].terms}
        summary |= {"seeds": [c["seed"] for c in found], **{k: stats([c[k] for c in found]) for k in _SUMMED}}
        means = {"smaller_x": "size_ratio", "accuracy_kept": "teacher_share", "batch1_faster_x": "batch1_speedup"}
        summary["met"] = {t: summary[k]["mean"] >= TARGETS[t] for t, k in means.items()}
        variants[name] = summary
    rows = sorted(teachers.items())
    teacher = {k: stats([r[k] for _, r in rows]) for k in ("accuracy", "size_mb", "latency_b1_ms", "latency_b32_ms")}
    assistant = [r["assistant_accuracy"] for _, r in rows if "assistant_accuracy" in r]
    return {
        "targets": TARGETS,
        "teacher": {"model": rows[0][1]["model"], **teacher} if rows else {},
        "assistant": {"accuracy": stats(assistant)} if assistant else {},
        "variants": variants,
        "deep_vs_logits": _against_logits(cells, variants),
    }


def _against_logits(cells: dict, variants: dict) -> dict:
    """Each other variant's accuracy minus ``logits``' on the seeds both have, and whether the mean difference
    exceeds the seeds' spread (the larger of the two standard deviations)."""
    if "logits" not in variants:
        return {}
    base = {c["seed"]: c["accuracy"] for c in cells.values() if c["variant"] == "logits"}
    out = {}
    for name, summary in variants.items():
        if name == "logits":
            continue
        diffs = [c["accuracy"] - base[c["seed"]] for c in cells.values() if c["variant"] == name and c["seed"] in base]
        sds = [variants["logits"]["accuracy"]["sd"], summary["accuracy"]["sd"]]
        spread = None if None in sds or not diffs else max(sds)
        out[name] = {
            "difference": stats(diffs) if diffs else None,
            "spread": spread,
            "beyond_spread": None if spread is None else bool(np.mean(diffs) > spread),
        }
    return out


def markdown_table(summary: dict) -> str:
    """Variants (exported, cpu-int8) against the fp32 teacher: mean +- sd over the seeds."""

    def pm(s: dict, scale: float = 1.0, spec: str = ".1f") -> str:
        sd = "" if s["sd"] is None else f" ± {format(s['sd'] * scale, spec)}"
        return f"{format(s['mean'] * scale, spec)}{sd}"

    lines = [
        "| variant | accuracy % (int8) | fp32 student % | share of teacher % | size MB | smaller | batch-1 ms "
        "| batch-1 faster | batch-32 ms | batch-32 faster |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in summary["variants"].items():
        lines.append(
            f"| {name} | {pm(v['accuracy'], 100)} | {pm(v['accuracy_fp32'], 100)} | {pm(v['teacher_share'], 100)} "
            f"| {pm(v['size_mb'])} | {pm(v['size_ratio'])}x | {pm(v['latency_b1_ms'], spec='.2f')} "
            f"| {pm(v['batch1_speedup'])}x | {pm(v['latency_b32_ms'])} | {pm(v['batch32_speedup'])}x |"
        )
    t = summary["teacher"]
    if t:
        lines.append(
            f"| {t['model']} | {pm(t['accuracy'], 100)} | | 100 | {pm(t['size_mb'])} | 1x "
            f"| {pm(t['latency_b1_ms'], spec='.2f')} | 1x | {pm(t['latency_b32_ms'])} | 1x |"
        )
    if summary["assistant"]:
        lines.append(f"\nAssistant (fp32, PyTorch) accuracy: {pm(summary['assistant']['accuracy'], 100)}%.")
    for name, d in summary["deep_vs_logits"].items():
        if d["difference"] is not None:
            verdict = "" if d["beyond_spread"] is None else (" (beyond" if d["beyond_spread"] else " (within")
            verdict += f" the seeds' spread {100 * d['spread']:.1f})" if d["spread"] is not None else ""
            lines.append(f"{name} - logits: {100 * d['difference']['mean']:+.1f} points{verdict}")
    return "\n".join(lines)


def load(path: Path, settings: dict) -> dict:
    """``cells`` and ``teachers`` already in ``path`` (none if it does not exist); refuses other settings."""
    try:
        stored = stored_result(path, settings)
    except StoredResultMismatch as exc:
        raise SystemExit(f"error: {exc}") from None
    return (
        {"cells": {}, "teachers": {}} if stored is None else {"cells": stored["cells"], "teachers": stored["teachers"]}
    )


def write(args, settings: dict, names: list[str], state: dict, command: str) -> dict:
    """Rewrite ``args.out`` with the cells so far and their summary (atomically); returns the summary."""
    summary = summarise(state["cells"], state["teachers"], names)
    result = {
        "what": "exported MiniLM-L3 students distilled from a strong teacher, by recipe (benchmarks/distill.py)",
        **provenance(),
        "command": command,
        "seeds": sorted({c["seed"] for c in state["cells"].values()}),
        "settings": settings,
        **summary,
        "teachers": state["teachers"],
        "cells": state["cells"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)  # a run killed while writing leaves the previous file whole
    return summary


def _check_work(args, settings: dict) -> None:
    """The work folder caches teachers for one set of settings: refuse another (the cache would not fit)."""
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / "settings.json"
    if path.exists() and json.loads(path.read_text()) != settings:
        raise SystemExit(f"error: {args.work} caches models of other settings ({path}); use another --work")
    path.write_text(json.dumps(settings, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = list(dict.fromkeys(v for v in args.variants.split(",") if v))
    seeds = [int(s) for s in args.seeds.split(",") if s]
    settings = {k: getattr(args, k) for k in SETTINGS}
    command = "python benchmarks/distill.py " + " ".join(sys.argv[1:] if argv is None else argv)
    state = load(args.out, settings)
    _check_work(args, settings)
    todo = {s: [n for n in names if cell_key(n, s) not in state["cells"]] for s in seeds}
    total = sum(map(len, todo.values()))
    print(f"{total} cells to run, {len(state['cells'])} already in {args.out}; work folder {args.work}", flush=True)
    started, done = time.perf_counter(), 0
    for seed, pending in todo.items():
        if not pending:
            continue
        for cell in run_seed(args, seed, pending, state, lambda: write(args, settings, names, state, command)):
            done += 1
            print(
                f"[{done}/{total}] {cell['variant']} seed {seed}: int8 {100 * cell['accuracy']:.1f}% "
                f"(fp32 {100 * cell['accuracy_fp32']:.1f}%), {100 * cell['teacher_share']:.1f}% of the teacher's "
                f"{100 * cell['teacher_accuracy']:.1f}%, {cell['size_mb']:.1f} MB ({cell['size_ratio']:.0f}x smaller), "
                f"batch-1 {cell['latency_b1_ms']:.2f} ms ({cell['batch1_speedup']:.1f}x faster); "
                f"cell {cell['seconds']:.0f} s, elapsed {time.perf_counter() - started:.0f} s",
                flush=True,
            )
    summary = write(args, settings, names, state, command)
    print("\n" + markdown_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
