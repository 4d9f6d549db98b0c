"""Discovery: who takes part in a run. Every node is asked ``query.describe`` once, at the start.

A node that does not answer, answers with an error or with a malformed reply, claims to be a second
teacher or claims a client id another node holds is left out with its reason logged (nodes are taken
in node-id order); the run needs one teacher node, edge clients that agree on the number of
classes, and at least ``federation.min_replies`` of them. Clients an unlearning request forgot are
never part of a run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Message

from nebula.common import keys
from nebula.common.messages import DescribeRequest, Envelope
from nebula.server.exceptions import DiscoveryError, ReplyRejected, TeacherUnavailable
from nebula.server.identity import IdentityError, NodeRegistry, RegisteredNode, check_claims
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
                log.warning(
                    "%s: %s is forgotten or excluded (federation.exclude_clients); not selected", when, info.client_id
                )
                del self.clients[node_id]


def _refused(info: NodeInfo | None, teacher: NodeInfo | None, clients: dict[int, NodeInfo]) -> str:
    """Why discovery leaves a node out ("" to keep it): no answer, a second teacher, a client id taken."""
    if info is None:
        return "did not answer describe"
    if info.role == keys.ROLE_TEACHER and teacher is not None:
        return f"also claims to be the teacher (node {teacher.node_id} answered first)"
    taken = {c.client_id: c.node_id for c in clients.values()}
    if info.role != keys.ROLE_TEACHER and info.client_id in taken:
        return f"claims client id {info.client_id!r}, which node {taken[info.client_id]} holds"
    return ""


def wait_for_nodes(grid, expected: int, *, wait_seconds: float) -> list[int]:
    """The grid's node ids once ``expected`` nodes are connected, or whatever is there after ``wait_seconds``."""
    deadline = time.monotonic() + wait_seconds
    node_ids = list(grid.get_node_ids())
    while len(node_ids) < expected and time.monotonic() < deadline:
        time.sleep(1.0)
        node_ids = list(grid.get_node_ids())
    return node_ids


def registered_nodes(grid, node_ids: list[int], registry: NodeRegistry) -> dict[int, RegisteredNode]:
    """The registered identity of each of ``node_ids`` from its authenticated name and key (grid.get_nodes());
    a node the registry does not know, or whose key it does not pin, is left out with the reason logged."""
    known = {}
    for node in grid.get_nodes():
        if node.node_id not in node_ids:
            continue
        try:
            known[node.node_id] = registry.identify(node.name, node.public_key)
        except IdentityError as exc:
            log.warning("node %s: %s; left out", node.node_id, exc)
    return known


def discover(
    exchange: Exchange,
    node_ids: list[int],
    envelope: Envelope,
    *,
    forgotten: Collection[str],
    min_clients: int,
    identities: Mapping[int, RegisteredNode] | None = None,
) -> Cohort:
    """Ask every node who it is and build the run's cohort; DiscoveryError / TeacherUnavailable if it cannot run.

    ``identities`` (node id -> its registered identity, server/identity.py) makes the registry decide role
    and client id: a reply that claims otherwise leaves its node out.
    """
    request = DescribeRequest(envelope)
    replies = exchange([Message(request.to_record(), dst_node_id=n, message_type=request.TYPE) for n in node_ids])
    clients: dict[int, NodeInfo] = {}
    teacher: NodeInfo | None = None
    for node_id in sorted(node_ids):
        try:
            info = parse_describe(replies[node_id]) if node_id in replies else None
        except ReplyRejected as exc:
            log.warning("%s; left out", exc)
            continue
        why = _refused(info, teacher, clients)
        if not why and identities is not None:
            why = check_claims(identities[node_id], role=info.role, client_id=info.client_id)
        if why:
            log.warning("node %s %s; left out", node_id, why)
        elif info.role == keys.ROLE_TEACHER:
            teacher = info
        else:
            clients[node_id] = info
    # Client order, not node-id order (node ids are new each run): the consensus sums the replies in this
    # order, and floating-point sums depend on it; this way a repeated run sums them in the same order.
    clients = dict(sorted(clients.items(), key=lambda item: item[1].client_id))
    if teacher is None:
        raise TeacherUnavailable(
            f"no node answered as teacher ({len(node_ids)} node(s) answered discovery, {len(clients)} as clients); "
            "start one with role='teacher'; in a local simulation (`flwr run`), set "
            "num-supernodes = clients + 1 (a node per client plus the teacher)"
        )
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
