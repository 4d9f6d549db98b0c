"""Discovery: who takes part in a run. Every node is asked ``query.describe`` once, at the start.

A node that does not answer, answers with an error or with a malformed reply is left out with its
reason logged; the run needs exactly one teacher node, edge clients that agree on the number of
classes, and at least ``federation.min_replies`` of them. Clients an unlearning request forgot are
never part of a run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np
from flwr.app import Message

from nebula.common import keys
from nebula.common.messages import DescribeRequest, Envelope
from nebula.server.exceptions import DiscoveryError, ReplyRejected, TeacherUnavailable
from nebula.server.replies import NodeInfo, parse_describe

log = logging.getLogger(__name__)

Exchange = Callable[[list[Message]], dict[int, Message]]  # messages -> replies keyed by the node asked


@dataclass
class Cohort:
    """The nodes of a run: edge clients by node id (in client-id order), the teacher, the classes."""

    clients: dict[int, NodeInfo]
    teacher: NodeInfo
    num_classes: int
    class_counts: list[int]  # the federation's label counts: the sum of the clients' own

    def drop(self, client_ids: Collection[str], *, when: str) -> None:
        """Leave out the clients ``client_ids`` names (forgotten by an unlearning request), logging each."""
        for node_id, info in list(self.clients.items()):
            if info.client_id in client_ids:
                log.warning("%s: %s was forgotten by an unlearning request; not selected", when, info.client_id)
                del self.clients[node_id]


def wait_for_nodes(grid, expected: int, *, wait_seconds: float) -> list[int]:
    """The grid's node ids once ``expected`` nodes are connected, or whatever is there after ``wait_seconds``."""
    deadline = time.monotonic() + wait_seconds
    node_ids = list(grid.get_node_ids())
    while len(node_ids) < expected and time.monotonic() < deadline:
        time.sleep(1.0)
        node_ids = list(grid.get_node_ids())
    return node_ids


def discover(
    exchange: Exchange, node_ids: list[int], envelope: Envelope, *, forgotten: Collection[str], min_clients: int
) -> Cohort:
    """Ask every node who it is and build the run's cohort; DiscoveryError / TeacherUnavailable if it cannot run."""
    request = DescribeRequest(envelope)
    replies = exchange([Message(request.to_record(), dst_node_id=n, message_type=request.TYPE) for n in node_ids])
    clients: dict[int, NodeInfo] = {}
    teacher: NodeInfo | None = None
    for node_id in node_ids:
        try:
            info = parse_describe(replies[node_id]) if node_id in replies else None
        except ReplyRejected as exc:
            log.warning("%s; left out", exc)
            continue
        if info is None:
            log.warning("node %s did not answer describe; left out", node_id)
        elif info.role == keys.ROLE_TEACHER:
            if teacher is not None:
                raise DiscoveryError(f"two teacher nodes: {teacher.node_id} and {node_id}")
            teacher = info
        else:
            clients[node_id] = info
    # Client order, not node-id order (node ids are new each run): the consensus sums the replies in this
    # order, and floating-point sums depend on it; this way a repeated run sums them in the same order.
    clients = dict(sorted(clients.items(), key=lambda item: item[1].client_id))
    if teacher is None:
        raise TeacherUnavailable("no node answered as teacher; start one with role='teacher'")
    cohort = Cohort(clients, teacher, 0, [])
    cohort.drop(forgotten, when="discovery")  # forgotten before the run: its label counts reach no one
    counts = {len(c.label_counts) for c in cohort.clients.values()}
    if len(counts) > 1:
        raise DiscoveryError(f"clients disagree on the number of classes: {sorted(counts)}")
    if len(cohort.clients) < min_clients:
        raise DiscoveryError(f"{len(cohort.clients)} edge clients answered, federation.min_replies is {min_clients}")
    cohort.num_classes = counts.pop()
    cohort.class_counts = np.sum([c.label_counts for c in cohort.clients.values()], axis=0).astype(int).tolist()
    return cohort
