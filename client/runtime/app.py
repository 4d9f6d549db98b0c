"""ClientApp for devices that infer but cannot train: answers from an ONNX export, no torch.

Node config: ``role='inference' export-dir='/path/to/export'`` plus the usual ``partition-id``
(see deploy/export/README.md). The main ClientApp (:mod:`nebula.client.app`) dispatches inference
nodes to the same code; this app imports only :mod:`nebula.client.runtime.inference` and Flower, so a
device without torch can run it.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from nebula.client.messages import guarded, read_request
from nebula.client.runtime import inference
from nebula.common import keys
from nebula.common.messages import DescribeRequest, FinishRequest, RoundRequest

app = ClientApp()


def _request(msg: Message, context: Context, kind: type):
    request, node = read_request(msg, context, kind)
    if node.role != keys.ROLE_INFERENCE:
        raise ValueError(f"node config role={node.role!r}; this ClientApp serves role='inference' nodes only")
    return request, node


@app.query("describe")
@guarded
def describe(msg: Message, context: Context) -> Message:
    return inference.describe(msg, *_request(msg, context, DescribeRequest))


@app.train("round")
@guarded
def train_round(msg: Message, context: Context) -> Message:
    return inference.answer_round(msg, *_request(msg, context, RoundRequest))


@app.query("finish")
@guarded
def finish(msg: Message, context: Context) -> Message:
    return inference.finish(msg, *_request(msg, context, FinishRequest))
