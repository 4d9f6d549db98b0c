"""Who this node is: role, index and client id, from node config and the server's message.

Deployment: ``flower-supernode --node-config "partition-id=0 num-partitions=2 role='teacher'"``;
an inference-only device: ``"partition-id=7 role='inference' export-dir='/opt/nebula/student'"``.
Simulation: virtual nodes only know ``partition-id``; the server names the teacher's
partition in every message (``teacher-index``, from the run config), and the inference
clients and their export folders come from ``federation.inference_clients``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flwr.app import Context

from nebula.common import keys

ROLES = (keys.ROLE_CLIENT, keys.ROLE_TEACHER, keys.ROLE_INFERENCE)


@dataclass(frozen=True)
class NodeIdentity:
    role: str  # one of ROLES
    index: int  # partition index of an edge client (-1 for the teacher)
    client_id: str
    export_dir: str = ""  # export package of an inference node (role keys.ROLE_INFERENCE), else ""


def identify(
    context: Context, *, teacher_index: int, inference_exports: Mapping[int, str] | None = None
) -> NodeIdentity:
    """Resolve this node's identity; raises ValueError naming the bad node-config field.

    ``inference_exports`` (``{partition: export folder}``, from ``federation.inference_clients``)
    makes a partition an inference node when its node config names no role; a node config's
    ``role`` and ``export-dir`` win over it.
    """
    cfg = context.node_config
    exports = inference_exports or {}
    if keys.NODE_PARTITION not in cfg:
        raise ValueError(f"node config has no {keys.NODE_PARTITION!r}; start the SuperNode with --node-config")
    try:
        index = int(cfg[keys.NODE_PARTITION])
    except (TypeError, ValueError):
        raise ValueError(f"node config {keys.NODE_PARTITION}={cfg[keys.NODE_PARTITION]!r} is not an integer") from None
    if index == teacher_index and index in exports:
        raise ValueError(f"federation.inference_clients names partition {index}, which is the teacher's")
    default = (
        keys.ROLE_TEACHER if index == teacher_index else keys.ROLE_INFERENCE if index in exports else keys.ROLE_CLIENT
    )
    role = str(cfg.get(keys.NODE_ROLE, default))
    if role not in ROLES:
        raise ValueError(f"node config role={role!r}; expected one of {', '.join(map(repr, ROLES))}")
    if role == keys.ROLE_TEACHER:
        return NodeIdentity(role, -1, str(cfg.get(keys.NODE_CLIENT_ID, "teacher")))
    client_id = str(cfg.get(keys.NODE_CLIENT_ID, f"client-{index}"))
    if role == keys.ROLE_CLIENT:
        return NodeIdentity(role, index, client_id)
    export_dir = str(cfg.get(keys.NODE_EXPORT_DIR, exports.get(index, "")))
    if not export_dir:
        raise ValueError(
            f"node config role='inference' needs {keys.NODE_EXPORT_DIR!r}, "
            "the folder of an export package (nebula export)"
        )
    return NodeIdentity(role, index, client_id, export_dir)
