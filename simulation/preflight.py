"""Checks of a simulation's data and models before Ray or any node starts.

A bad input used to surface minutes later as warnings from the nodes and a ``TeacherUnavailable``
traceback. :func:`preflight` finds it in the command's own process, in about a second:

* the dataset loads (a missing file or column, fewer than 2 classes: :class:`DatasetError`'s message);
* the split sizes fit the dataset. When they do not and the user set none of them on the command
  line, they are fitted to it (:func:`fit_sizes`, the rule below); sizes the user set are kept, and
  when they cannot fit the run is refused, naming the flags;
* the federation's data view builds exactly as every node will build it (split and partition);
* every model resolves: a builtin is prepared (or built now, as the nodes would), a local folder
  exists and holds a ``config.json``, and a Hub id is refused at once when the Hub is offline
  (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``) unless the Hugging Face cache already holds it.

Fitting rule (``n`` examples, ``K`` clients): test gets 20% of ``n``, public 30%, private the rest
(``private_size = 0``), each client keeping at least :data:`MIN_PER_CLIENT` private examples. When the
rest would be smaller than ``K * MIN_PER_CLIENT``, private gets exactly that and test and public share
what is left 2:3. A size the user set is kept as it is and the others share what it leaves.
``federation.public_per_round`` is lowered to the fitted public pool unless the user set it.

Training length follows the sizes (:func:`fit_epochs`): a preset's epochs are sized for its own data
(the quick preset's client takes 15 optimizer steps a round on 240 tweets); on a small file an epoch is a
handful of steps and nothing moves from the class prior (benchmarks/standin_csv.py: 5 steps a round left
every client, the teacher and the student at the majority class). When the sizes are fitted, each
training stage the user did not set (clients' local epochs, the teacher's, the global student's) gets at
least :data:`MIN_STEPS` optimizer steps a round.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

from nebula.common.config import NebulaConfig
from nebula.common.data import DatasetError, TextDataset, load_dataset
from nebula.common.federation_data import build_federation_data
from nebula.common.packages import BUILTIN_MODELS, AssetError

MIN_PER_CLIENT = 5  # private examples a client keeps at least (train + its own holdout)
MIN_STEPS = 30  # optimizer steps a round per training stage when the sizes are fitted to a small file
SHARES = {"test_size": 0.2, "public_size": 0.3}  # of the dataset, when sizes are fitted; private: the rest
SIZE_FIELDS = ("test_size", "public_size", "private_size")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# A Hub id is "name" or "owner/name"; anything else that is not a folder is a missing folder.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


class PreflightError(ValueError):
    """The run cannot start; the message says why and what to change."""


@dataclass(frozen=True)
class Preflight:
    config: NebulaConfig  # the checked configuration, sizes fitted if they had to be
    notes: tuple[str, ...]  # one line each, for the user (e.g. the fitted sizes)


def flag(name: str) -> str:
    """The command-line flag of a config field (``test_size`` -> ``--test-size``)."""
    return "--" + name.replace("_", "-")


def preflight(config: NebulaConfig, *, explicit: set[str] | frozenset[str] = frozenset()) -> Preflight:
    """Check ``config``'s data and models; fit the data sizes not in ``explicit`` if they must be.

    Parameters
    ----------
    explicit : set of str
        Flat keys the user set on the command line (``data.test_size``, ...): those are never changed.

    Raises
    ------
    PreflightError
        One message naming the problem: the dataset, sizes that cannot fit, or a model.
    """
    data = config.data
    try:
        dataset = load_dataset(data.dataset, text_field=data.text_field, label_field=data.label_field)
    except DatasetError as exc:
        raise PreflightError(str(exc)) from None
    notes = []
    config, note = _fitted(config, dataset, explicit)
    if note:  # sizes fitted to a small file: the training length follows them
        config, epochs_note = _fitted_training(config, len(dataset), explicit)
        notes += [note, epochs_note] if epochs_note else [note]
    try:
        build_federation_data(config.data)  # what every node does first; cached for the baselines
    except (DatasetError, ValueError) as exc:
        raise PreflightError(
            f"{dataset.name}: cannot spread {len(dataset)} examples over {config.data.num_clients} clients "
            f"({config.data.partition}): {exc}"
        ) from None
    check_models(config)
    return Preflight(config, tuple(notes))


# --- data sizes ---------------------------------------------------------------------------------


def sizes_problem(n: int, test: int, public: int, private: int, clients: int) -> str | None:
    """Why (test, public, private) do not fit ``n`` examples over ``clients`` clients; None if they fit."""
    rest = n - test - public
    if rest <= 0:
        return f"test ({test}) + public ({public}) = {test + public} leaves no private examples out of {n}"
    if private > rest:
        return f"test ({test}) + public ({public}) + private ({private}) = {test + public + private} exceeds {n}"
    have = private or rest
    if have < clients * MIN_PER_CLIENT:
        return (
            f"{have} private examples give {clients} clients fewer than {MIN_PER_CLIENT} each "
            f"(at least {clients * MIN_PER_CLIENT} are needed)"
        )
    return None


def fit_sizes(n: int, clients: int, fixed: dict[str, int]) -> dict[str, int] | None:
    """Sizes for ``n`` examples by the module's rule, keeping those in ``fixed``; None if none fit."""
    sizes = {name: fixed.get(name, max(1, int(share * n))) for name, share in SHARES.items()}
    sizes["private_size"] = fixed.get("private_size", 0)
    free = [name for name in SHARES if name not in fixed]
    if free and sizes_problem(n, sizes["test_size"], sizes["public_size"], sizes["private_size"], clients):
        need = sizes["private_size"] or clients * MIN_PER_CLIENT
        budget = n - need - sum(sizes[name] for name in SHARES if name in fixed)
        total = sum(SHARES[name] for name in free)
        for name in free:
            sizes[name] = int(budget * SHARES[name] / total)
        if any(sizes[name] < 1 for name in free):
            return None
    if sizes_problem(n, sizes["test_size"], sizes["public_size"], sizes["private_size"], clients):
        return None
    return sizes


def fit_epochs(rows: dict[str, int], batch_size: int, current: dict[str, int]) -> dict[str, int]:
    """Epochs per stage giving at least :data:`MIN_STEPS` optimizer steps a round, never fewer than now.

    ``rows`` maps a ``train`` epochs field to the examples one epoch of it goes through (an average
    client's training rows for ``local_epochs``, the round's public inputs for ``teacher_epochs``, the
    pool for ``student_epochs``); ``current`` holds the fields' present values.
    """
    fitted = {}
    for name, n in rows.items():
        steps = -(-max(1, n) // batch_size)  # ceil(n / batch), at least 1
        fitted[name] = max(current[name], -(-MIN_STEPS // steps))
    return fitted


def _fitted_training(config: NebulaConfig, n: int, explicit: set[str] | frozenset[str]) -> tuple[NebulaConfig, str]:
    """``config`` with the epochs of :func:`fit_epochs` for ``n`` examples; a line for the user (or "")."""
    data, train = config.data, config.train
    private = data.private_size or n - data.test_size - data.public_size
    rows = {
        "local_epochs": int(private / data.num_clients * (1 - data.holdout_fraction)),
        "teacher_epochs": config.federation.public_per_round,
        "student_epochs": data.public_size if train.student_inputs == "pool" else config.federation.public_per_round,
    }
    rows = {name: count for name, count in rows.items() if f"train.{name}" not in explicit}
    epochs = fit_epochs(rows, train.batch_size, {name: getattr(train, name) for name in rows})
    changed = {name: value for name, value in epochs.items() if value != getattr(train, name)}
    if not changed:
        return config, ""
    fitted = dataclasses.replace(config, train=dataclasses.replace(train, **changed)).validate()
    said = ", ".join(f"{flag(name)} {value}" for name, value in changed.items())
    return fitted, f"nebula: so few examples make short epochs: using {said} (at least {MIN_STEPS} steps a round each)"


def _fitted(
    config: NebulaConfig, dataset: TextDataset, explicit: set[str] | frozenset[str]
) -> tuple[NebulaConfig, str]:
    data, n = config.data, len(dataset)
    current = {name: getattr(data, name) for name in SIZE_FIELDS}
    problem = sizes_problem(n, *current.values(), data.num_clients)
    if problem is None:
        return config, ""
    fixed = {name: value for name, value in current.items() if f"data.{name}" in explicit}
    sizes = fit_sizes(n, data.num_clients, fixed)
    if sizes is None:
        advice = fit_sizes(n, data.num_clients, {})
        if advice is None:
            raise PreflightError(
                f"{dataset.name} has {n} examples, too few for {data.num_clients} clients: each needs at least "
                f"{MIN_PER_CLIENT} private examples, besides test and public examples; lower {flag('num_clients')} "
                f"or use a larger dataset"
            )
        given = ", ".join(f"{flag(name)} {value}" for name, value in fixed.items())
        suggest = " ".join(f"{flag(name)} {value}" for name, value in advice.items())
        raise PreflightError(
            f"{dataset.name} has {n} examples: {problem}. Lower the sizes you set ({given}), "
            f"e.g. {suggest} (private 0 = all that remain), or leave them out to fit them automatically"
        )
    new_data = dataclasses.replace(data, **sizes)
    federation = config.federation
    per_round = ""
    if federation.public_per_round > sizes["public_size"] and "federation.public_per_round" not in explicit:
        federation = dataclasses.replace(federation, public_per_round=sizes["public_size"])
        per_round = f", public per round {sizes['public_size']}"
    fitted = dataclasses.replace(config, data=new_data, federation=federation).validate()
    rest = n - sizes["test_size"] - sizes["public_size"]
    private = sizes["private_size"] or rest
    wanted = " + ".join(f"{name.removesuffix('_size')} {value}" for name, value in current.items())
    note = (
        f"nebula: {dataset.name} has {n} examples, too few for {wanted}: using test {sizes['test_size']}, "
        f"public {sizes['public_size']}, private {private}"
        f"{' (the rest)' if not sizes['private_size'] else ''}, about {private // data.num_clients} per client"
        f"{per_round}; choose them with {', '.join(flag(name) for name in SIZE_FIELDS)}"
    )
    return fitted, note


# --- models -------------------------------------------------------------------------------------


def model_settings(config: NebulaConfig) -> list[tuple[str, str]]:
    """(where, model) for the student, every student override and the teacher."""
    m = config.model
    found = [("model.student", m.student)]
    for entry in filter(None, (e.strip() for e in m.student_overrides.split(","))):
        index, _, model = entry.partition(":")
        found.append((f"model.student_overrides (client {index.strip()})", model.strip()))
    found.append(("model.teacher", m.teacher))
    return found


def check_models(config: NebulaConfig) -> None:
    """Raise :class:`PreflightError` for the first model setting that cannot load (see the module)."""
    cache = Path(config.model.cache_dir) if config.model.cache_dir else None
    seen = set()
    for where, model in model_settings(config):
        if model not in seen:
            seen.add(model)
            check_model(model, where=where, cache_dir=cache)


def check_model(model: str, *, where: str, cache_dir: Path | None = None) -> None:
    if model in BUILTIN_MODELS:
        from nebula.learning.assets import resolve_model  # verifies, or builds once, the prepared folder

        try:
            resolve_model(model, cache_dir=cache_dir)
        except AssetError as exc:
            raise PreflightError(f"{where}: {exc}") from None
        return
    folder = Path(model).expanduser()
    if folder.exists():
        if not (folder / "config.json").is_file():
            raise PreflightError(
                f"{where}: {folder} holds no config.json: not a Hugging Face model folder "
                f"(builtins: {', '.join(BUILTIN_MODELS)})"
            )
        return
    if not _HUB_ID.fullmatch(model):
        raise PreflightError(f"{where}: model folder {model!r} not found (builtins: {', '.join(BUILTIN_MODELS)})")
    offline = next((v for v in OFFLINE_VARIABLES if os.environ.get(v, "").lower() in ("1", "true", "yes", "on")), None)
    if offline and not _in_hub_cache(model):
        raise PreflightError(
            f"{where}: model {model!r} is not a builtin ({', '.join(BUILTIN_MODELS)}) or a local folder, "
            f"and the Hub is offline ({offline}={os.environ[offline]}) with no cached copy"
        )
    # Online, or cached: transformers loads it on the nodes.


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id the hub library rejects, or no library: not cached
        return False
