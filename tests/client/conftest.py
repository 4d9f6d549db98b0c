"""Shared fixtures of the client tests: a real MiniLM-L3 export for tweets, and hand-built Flower messages."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from nebula.common import keys
from nebula.common.config import NebulaConfig


@pytest.fixture(scope="session")
def tweets_export(tmp_path_factory):
    """An fp32 export of an untrained MiniLM-L3 LoRA adapter with the 3 tweet labels (base: the minilm-l3 cache)."""
    from nebula.deploy.export.export import ExportConfig, export_adapter
    from nebula.learning.models import LoraSpec, load_learner, save_adapter

    learner = load_learner("minilm-l3", num_labels=3, lora=LoraSpec(), seed=0)
    adapter = save_adapter(learner, tmp_path_factory.mktemp("adapter") / "student")
    out = tmp_path_factory.mktemp("exports") / "student"
    export_adapter(ExportConfig(adapter_dir=str(adapter), out=str(out), target="fp32", max_length=32, dataset="tweets"))
    return out


@pytest.fixture()
def make_request():
    """``make_request(config, message_type, fields, student=False)``.

    It builds a server message as server/federation.py builds it.
    """

    def build(config: NebulaConfig, message_type: str, fields: dict | None = None, *, student: bool = False) -> Message:
        content = RecordDict({keys.CONFIG: ConfigRecord(config.to_flat()), keys.ROUND: ConfigRecord(fields or {})})
        if student:  # a global student's state, as sent to clients that run its base model
            content[keys.STUDENT_STATE] = ArrayRecord({"classifier.weight": Array(np.ones((3, 4), np.float32))})
        return Message(content, dst_node_id=7, message_type=message_type)

    return build


@pytest.fixture()
def make_context():
    """``make_context(node_config)``: the Context a SuperNode gives the ClientApp."""
    return lambda node_config: Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})
