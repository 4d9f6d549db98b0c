"""Message types and record keys shared by the server, edge clients and the teacher.

Everything that crosses the wire is named here once; no string literal for a message
key appears anywhere else.
"""

# Message types (Flower: "<type>.<action>").
MSG_DESCRIBE = "query.describe"  # server -> every node: who are you, what do you hold?
MSG_ROUND = "train.round"  # server -> edge client: digest, revisit, answer logits
MSG_TEACH = "train.teach"  # server -> teacher: consensus in, refined targets out
MSG_FINISH = "query.finish"  # server -> every node: save artefacts, final evaluation
MSG_RESTORE = "train.restore"  # server -> teacher after a restart: load a checkpoint, send the global student back

# Record names inside a RecordDict.
CONFIG = "config"  # ConfigRecord: the flat NebulaConfig (see nebula.common.config)
ROUND = "round"  # ConfigRecord: per-message fields below
REPLY = "reply"  # ConfigRecord: a node's answer (payload blobs + identity)
METRICS = "metrics"  # MetricRecord: numbers for the server's log

# Fields of the ROUND record.
ROUND_INDEX = "round"
TARGET_BLOB = "targets"  # wire-format logits on last round's public inputs (may be absent)
QUERY_IDS = "query-ids"  # public-input ids to answer this round (list[int])
CONSENSUS_BLOB = "consensus"  # wire-format log-probabilities of the consensus (teacher only)
TEACHER_INDEX = "teacher-index"  # which simulated partition is the teacher
OUTPUT_DIR = "output-dir"
STUDENT_MODEL = "student-model"  # base model the global student state belongs to
CLASS_COUNTS = "class-counts"  # list[int]: the federation's label counts (sum over clients), for logit adjustment
RESTORE_ROUND = "restore-round"  # int: the checkpoint round the teacher restores (0: its initial state)
RESTORE_DIR = (
    "restore-dir"  # str: load the states from this folder (relative to the output dir) instead of a checkpoint
)
RESTORE_KEEP = "restore-keep"  # bool: keep the current states, replace only the gathered consensus
GATHERED_BLOB = (
    "gathered"  # wire-format log-probabilities of the consensus gathered up to RESTORE_ROUND (may be absent)
)

# Fields of the REPLY record.
ROLE = "role"
CLIENT_ID = "client-id"
CLIENT_INDEX = "client-index"
MODEL = "model"
NUM_EXAMPLES = "num-examples"
LABEL_COUNTS = "label-counts"  # list[int], one per class: per-class support for aggregation
LOGITS_BLOB = "logits"
REFINED_BLOB = "refined"
CHECKPOINT = "checkpoint"  # str: the checkpoint folder the teacher wrote (relative to the run folder)

# ArrayRecord names.
STUDENT_STATE = "student-state"  # the global student's trainable state (teacher -> server -> clients)

ROLE_CLIENT = "client"
ROLE_TEACHER = "teacher"
ROLE_INFERENCE = "inference"  # an edge client that only answers logits from an ONNX export (no torch)

# Node config keys (deployment: flower-supernode --node-config "...").
NODE_PARTITION = "partition-id"
NODE_NUM_PARTITIONS = "num-partitions"
NODE_ROLE = "role"
NODE_CLIENT_ID = "client-id"
NODE_OUTPUT_DIR = "output-dir"  # where a node writes its run files (default: the server's run folder)
NODE_DATA_PATH = "data-path"  # the device's own labelled data (CSV / JSON-lines file or folder); deployment only
NODE_TEXT_FIELD = "text-field"  # column of the text in the device's file (default: the federation's data.text_field)
NODE_LABEL_FIELD = "label-field"  # column of the label in the device's file (default: data.label_field)
NODE_EXPORT_DIR = "export-dir"  # export folder of an inference-only node (role='inference')
NODE_WORKER_SOCKET = "worker-socket"  # Unix socket of the node's long-lived local worker (client/worker.py)
