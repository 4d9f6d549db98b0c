"""Who this node is: role, index and client id, from node config and the server's message.

Deployment: ``flower-supernode --node-config "partition-id=0 num-partitions=2 role='teacher'"``.
Simulation: virtual nodes only know ``partition-id``; the server names the teacher's
partition in every message (``teacher-index``, from the run config).
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import Context

from common import keys


@dataclass(frozen=True)
class NodeIdentity:
    role: str  # keys.ROLE_CLIENT or keys.ROLE_TEACHER
    index: int  # partition index of an edge client (-1 for the teacher)
    client_id: str


def identify(context: Context, *, teacher_index: int) -> NodeIdentity:
    """Resolve this node's identity; raises ValueError naming the bad node-config field."""
    cfg = context.node_config
    if keys.NODE_PARTITION not in cfg:
        raise ValueError(f"node config has no {keys.NODE_PARTITION!r}; start the SuperNode with --node-config")
    try:
        index = int(cfg[keys.NODE_PARTITION])
    except (TypeError, ValueError):
        raise ValueError(f"node config {keys.NODE_PARTITION}={cfg[keys.NODE_PARTITION]!r} is not an integer") from None
    role = str(cfg.get(keys.NODE_ROLE, keys.ROLE_TEACHER if index == teacher_index else keys.ROLE_CLIENT))
    if role not in (keys.ROLE_CLIENT, keys.ROLE_TEACHER):
        raise ValueError(f"node config role={role!r}; expected 'client' or 'teacher'")
    if role == keys.ROLE_TEACHER:
        return NodeIdentity(role, -1, str(cfg.get(keys.NODE_CLIENT_ID, "teacher")))
    return NodeIdentity(role, index, str(cfg.get(keys.NODE_CLIENT_ID, f"client-{index}")))
