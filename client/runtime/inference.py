"""The inference participant: an edge client that answers logit queries from an ONNX export.

For devices that can run a model but not train one (phones, cameras). The node holds an
export package (``nebula export``) and answers each round's public inputs with
:class:`nebula.client.runtime.predictor.EdgePredictor` (onnxruntime, tokenizers, numpy). This module and
everything it imports never import torch, transformers or peft (``tests/client`` checks
``sys.modules`` in a fresh interpreter). It is reached from :mod:`nebula.client.runtime.app` on a
device, and from :mod:`nebula.client.app` for a node whose role is ``inference``.

What it tells the server, and what follows:

* describe: role ``inference``, the export's base model, ``num_examples = 0`` and all-zero
  label counts: it holds no private data. Rules that weight clients by their data therefore
  leave the consensus as the training clients make it (``class-contrast`` and
  ``class-support`` by label counts, ``mean`` and ``entropy`` by example counts). The
  unweighted ``median`` and ``trimmed-mean`` count it as one voter. Its replies are validated
  and recorded in the ledger (weight 0) like any client's, and count towards ``min_replies``;
  a round where only inference clients answer validly is not aggregated (the server skips
  rounds whose valid replies all weigh 0), and it is sent no global student.
* a round: the export's logits on the requested public ids, encoded as
  ``federation.wire_dtype``. Targets and the global student's state are ignored (it cannot
  train). Metrics: ``seconds`` and, in evaluation rounds, ``acc_global`` on the global
  test set, computed with onnxruntime. Texts are tokenised as the export says (its
  manifest's ``max_length``), not as ``data.max_length``.
* finish: an acknowledgement; there is no adapter to save.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from flwr.app import Message

from nebula.client.messages import answer, describe_reply
from nebula.client.node import NodeIdentity
from nebula.client.runtime.package import MANIFEST_FILE
from nebula.client.runtime.predictor import EdgePredictor
from nebula.common.config import NebulaConfig
from nebula.common.federation_data import FederationData, build_federation_data
from nebula.common.messages import DescribeRequest, FinishReply, FinishRequest, RoundReply, RoundRequest
from nebula.common.packages import builtin_name
from nebula.common.wire import encode_logits

# One predictor per export folder and thread count in this process (Flower reuses a
# simulation's actors across messages); a re-exported folder (new manifest) is reloaded.
_PREDICTORS: dict[tuple[str, int], tuple[int | None, EdgePredictor]] = {}


def predictor_for(folder: str | Path, *, threads: int = 0) -> EdgePredictor:
    """The export's :class:`EdgePredictor`, loaded once per process.

    Raises
    ------
    nebula.client.runtime.errors.ExportError
        The folder is missing or is not a valid package; the message names the folder or file.
    """
    path = Path(folder).expanduser().resolve()
    try:
        stamp: int | None = (path / MANIFEST_FILE).stat().st_mtime_ns
    except OSError:
        stamp = None  # EdgePredictor says what is missing
    key = (str(path), threads)
    cached = _PREDICTORS.get(key)
    if cached is None or cached[0] != stamp:
        _PREDICTORS[key] = (stamp, EdgePredictor(path, intra_op_threads=threads or None))
    return _PREDICTORS[key][1]


def model_name(base_model: str) -> str:
    """A builtin model's cache folder or Hub id reads as its name (``minilm-l3``), as ``model.student`` does."""
    return builtin_name(base_model) or base_model


class InferenceClient:
    """An export package bound to the federation's data view (public pool and global test set).

    Raises ValueError when the export's labels do not match the federation's classes.
    """

    def __init__(self, config: NebulaConfig, node: NodeIdentity) -> None:
        self.config, self.node = config, node
        self.data: FederationData = build_federation_data(config.data)
        self.predictor = predictor_for(node.export_dir, threads=config.train.threads)
        labels = self.predictor.labels
        if len(labels) != self.data.num_classes:
            raise ValueError(
                f"export {node.export_dir} has {len(labels)} labels {list(labels)}, the federation's dataset "
                f"{config.data.dataset!r} has {self.data.num_classes} classes {list(self.data.dataset.label_names)}"
            )

    def describe(self) -> dict:
        return {
            "model": model_name(self.predictor.manifest.base_model),
            "num_examples": 0,  # no private data: weight 0 under the data-weighted rules
            "label_counts": [0] * self.data.num_classes,
        }

    def answer(self, query_ids: np.ndarray, *, evaluate: bool) -> tuple[bytes, dict[str, float]]:
        """Wire-format logits on the public inputs ``query_ids`` (N,), and the round's metrics."""
        t0 = time.perf_counter()
        if len(query_ids) and (query_ids.min() < 0 or query_ids.max() >= len(self.data.public)):
            raise ValueError(
                f"public ids outside 0..{len(self.data.public) - 1}: min {query_ids.min()}, max {query_ids.max()}"
            )
        logits = self.predictor.predict_logits(self.data.public_texts(query_ids))  # (N, C)
        blob = encode_logits(query_ids, logits, dtype=self.config.federation.wire_dtype)
        metrics = self.evaluate() if evaluate else {}
        metrics["seconds"] = time.perf_counter() - t0
        return blob, metrics

    def evaluate(self) -> dict[str, float]:
        """Accuracy of the export on the global test set."""
        test = self.data.test
        logits = self.predictor.predict_logits(self.data.texts(test))  # (n_test, C)
        return {"acc_global": float(np.mean(logits.argmax(axis=1) == self.data.labels(test)))}


# -- message handlers: (msg, typed request, node) -> reply ---------------------------------
def describe(msg: Message, request: DescribeRequest, node: NodeIdentity) -> Message:
    return describe_reply(msg, node, InferenceClient(request.envelope.config, node).describe())


def answer_round(msg: Message, request: RoundRequest, node: NodeIdentity) -> Message:
    """Logits on the round's public ids; any targets or global-student state in the request are ignored."""
    config, r = request.envelope.config, request.round_index
    evaluate = r % config.train.eval_every == 0 or r == config.federation.rounds
    blob, metrics = InferenceClient(config, node).answer(request.query_ids, evaluate=evaluate)
    return answer(msg, RoundReply(node.client_id, blob, metrics))


def finish(msg: Message, request: FinishRequest, node: NodeIdentity) -> Message:
    """Nothing to save: the export is the node's model and it never changes."""
    return answer(msg, FinishReply(node.client_id))
