"""Who this node is: role, index and client id, from node config and the server's message.

Deployment: ``flower-supernode --node-config "partition-id=0 num-partitions=2 role='teacher'"``;
an inference-only device: ``"partition-id=7 role='inference' export-dir='/opt/nebula/student'"``;
an edge client with its own labelled data:
``"partition-id=0 num-partitions=2 data-path='/data/mine.csv' text-field='text' label-field='label'"``
(without ``data-path`` it trains on its partition of the shared dataset, as in simulation).
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
    data: DataSource | None = None  # an edge client's own labelled data (node config data-path), else None


@dataclass(frozen=True)
class DataSource:
    """Where an edge client's own labelled data is on the device, and its columns.

    Empty fields mean the federation's ``data.text_field`` / ``data.label_field``
    (:meth:`fields`), which only the server's message carries.
    """

    path: str
    text_field: str = ""
    label_field: str = ""

    def fields(self, default_text: str, default_label: str) -> tuple[str, str]:
        """``(text field, label field)``: the node config's, else the defaults given."""
        return self.text_field or default_text, self.label_field or default_label


def data_source(node_config: Mapping) -> DataSource | None:
    """The node config's ``data-path`` (with ``text-field``, ``label-field``), or None without one.

    Raises ValueError for an empty ``data-path``, or for field names given without a ``data-path``.
    Whether the file is there and readable is checked when the client loads it.
    """
    fields = {k: str(node_config[k]).strip() for k in (keys.NODE_TEXT_FIELD, keys.NODE_LABEL_FIELD) if k in node_config}
    if keys.NODE_DATA_PATH not in node_config:
        if fields:
            raise ValueError(
                f"node config sets {', '.join(map(repr, fields))} but no {keys.NODE_DATA_PATH!r}; "
                "name the device's data file with data-path"
            )
        return None
    path = str(node_config[keys.NODE_DATA_PATH]).strip()
    if not path:
        raise ValueError(f"node config {keys.NODE_DATA_PATH} is empty; name a CSV / JSON-lines file or a folder")
    for key, value in fields.items():
        if not value:
            raise ValueError(f"node config {key} is empty; leave it out for the federation's default")
    return DataSource(path, fields.get(keys.NODE_TEXT_FIELD, ""), fields.get(keys.NODE_LABEL_FIELD, ""))


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
    data = data_source(cfg)
    if data is not None and role != keys.ROLE_CLIENT:
        raise ValueError(
            f"node config {keys.NODE_DATA_PATH} is for edge clients (role='client'), this node is a {role}"
        )
    if role == keys.ROLE_TEACHER:
        return NodeIdentity(role, -1, str(cfg.get(keys.NODE_CLIENT_ID, "teacher")))
    client_id = str(cfg.get(keys.NODE_CLIENT_ID, f"client-{index}"))
    if role == keys.ROLE_CLIENT:
        return NodeIdentity(role, index, client_id, data=data)
    export_dir = str(cfg.get(keys.NODE_EXPORT_DIR, exports.get(index, "")))
    if not export_dir:
        raise ValueError(
            f"node config role='inference' needs {keys.NODE_EXPORT_DIR!r}, "
            "the folder of an export package (nebula export)"
        )
    return NodeIdentity(role, index, client_id, export_dir)
