"""On-device inference from an export package: onnxruntime, ``tokenizers`` and numpy only.

This module must never import torch or transformers (a device has neither; a test checks
``sys.modules`` in a fresh interpreter after a prediction).

Example
-------
>>> predictor = EdgePredictor("exports/student-int8")
>>> predictor.predict(["what a lovely day"])
['positive']
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nebula.client.runtime.errors import ExportError
from nebula.client.runtime.package import Manifest, load_package, pad_batch


class EdgePredictor:
    """Classify texts with an export package.

    Parameters
    ----------
    folder : str or Path
        Export folder (``nebula export --out``); verified against its manifest on load.
    intra_op_threads : int, optional
        onnxruntime threads per operator (None: onnxruntime's default).

    Raises
    ------
    ExportError
        The package is missing, corrupt or altered (see :func:`nebula.client.runtime.package.load_package`).
    """

    def __init__(self, folder: str | Path, *, intra_op_threads: int | None = None) -> None:
        from tokenizers import Tokenizer

        package = load_package(folder, intra_op_threads=intra_op_threads)
        self.folder = package.folder
        self.manifest: Manifest = package.manifest
        self._session = package.session
        self._id_map = package.id_map
        try:
            self._tokenizer = Tokenizer.from_file(str(package.tokenizer_path))
        except Exception as err:
            raise ExportError(f"{package.tokenizer_path}: cannot be read by tokenizers ({err})") from None
        # Same ids as transformers' tokenizer(texts, truncation=True, max_length=max_length):
        # truncation counts the special tokens; padding happens here, per batch.
        self._tokenizer.enable_truncation(self.manifest.max_length)
        self._tokenizer.no_padding()
        self._pad_id = int(self._map(np.asarray([self.manifest.pad_token_id]))[0])

    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.labels

    @property
    def pad_id(self) -> int:
        """Padding id as the model takes it (after the vocabulary map)."""
        return self._pad_id

    def _map(self, ids: np.ndarray) -> np.ndarray:
        return ids if self._id_map is None else self._id_map[ids]

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids as the model takes them (vocabulary map applied), unpadded."""
        encodings = self._tokenizer.encode_batch(list(texts))
        return [self._map(np.asarray(e.ids, dtype=np.int64)).tolist() for e in encodings]

    def outside_vocabulary(self, texts: Sequence[str]) -> np.ndarray:
        """Bool (N,): the text has a token the pruned vocabulary lacks (read as unknown). All False if unpruned."""
        unk = self.manifest.unk_token_id
        if self._id_map is None or unk is None:
            return np.zeros(len(texts), dtype=bool)
        unk_new = self._id_map[unk]
        return np.asarray(
            [
                bool(np.any((self._id_map[ids] == unk_new) & (ids != unk)))
                for ids in (np.asarray(e.ids, dtype=np.int64) for e in self._tokenizer.encode_batch(list(texts)))
            ]
        )

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """One onnxruntime call on padded (B, L) int64 arrays; logits float32 (B, C)."""
        (logits,) = self._session.run(
            [self.manifest.output], {"input_ids": input_ids, "attention_mask": attention_mask}
        )
        return np.asarray(logits, dtype=np.float32)

    def predict_logits(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """Logits (N, C), float32, in the order of ``texts``.

        Texts are sorted by length before batching so a batch pads little; the order is restored.
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        rows = self.encode(texts)
        order = np.argsort([len(r) for r in rows], kind="stable")
        out = np.empty((len(rows), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            ids, mask = pad_batch([rows[i] for i in chunk], pad_id=self._pad_id)
            out[chunk] = self.run(ids, mask)
        return out

    def predict_proba(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """Class probabilities (N, C): softmax of :meth:`predict_logits`."""
        logits = self.predict_logits(texts, batch_size=batch_size)
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, texts: Sequence[str], *, batch_size: int = 32) -> list[str]:
        """The most likely label of each text."""
        return [self.labels[i] for i in self.predict_logits(texts, batch_size=batch_size).argmax(axis=1)]
