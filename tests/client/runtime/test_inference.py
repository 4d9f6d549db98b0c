"""The inference participant: logits from an ONNX export, never torch, and error replies instead of crashes.

Both ClientApps are checked: ``nebula.client.runtime.app`` (a device's) and ``nebula.client.app`` (every
node's, which dispatches a node whose role is ``inference`` to the same code).
"""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nebula.client.app import app as main_app
from nebula.client.runtime import inference
from nebula.client.runtime.app import app as device_app
from nebula.client.runtime.predictor import EdgePredictor
from nebula.common import keys
from nebula.common.federation_data import build_federation_data
from nebula.common.presets import preset_config

SMOKE = preset_config("smoke")  # rounds 2: round 2 evaluates
IDS = list(range(5, 29))

# Runs in a fresh interpreter: describe, a round (with targets and a global student it must
# ignore) and finish through the device app, the same round through the main app, then sys.modules.
PROBE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity
    import nebula.client.app, nebula.client.runtime.app
    from nebula.common import keys
    from nebula.common.presets import preset_config
    from nebula.common.wire import decode_logits, encode_logits

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    flat = ConfigRecord(preset_config("smoke").to_flat())
    node_config = {"partition-id": 2, "role": "inference", "export-dir": sys.argv[1]}
    context = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})

    def ask(app, message_type, fields, **arrays):
        content = RecordDict({keys.CONFIG: flat, keys.ROUND: ConfigRecord(fields), **arrays})
        reply = app(Message(content, dst_node_id=7, message_type=message_type), context)
        assert not reply.has_error(), reply.error
        return reply

    ids = json.loads(sys.argv[2])
    fields = {keys.ROUND_INDEX: 2, keys.QUERY_IDS: ids, keys.CLASS_COUNTS: [30, 30, 30],
              keys.TARGET_BLOB: encode_logits(np.array(ids), np.zeros((len(ids), 3), np.float32))}
    student = ArrayRecord({"classifier.weight": Array(np.ones((3, 4), np.float32))})
    described = ask(nebula.client.runtime.app.app, keys.MSG_DESCRIBE, {})
    answered = ask(nebula.client.runtime.app.app, keys.MSG_ROUND, fields, **{keys.STUDENT_STATE: student})
    via_main = ask(nebula.client.app.app, keys.MSG_ROUND, fields)
    ask(nebula.client.runtime.app.app, keys.MSG_FINISH, {})
    decoded = [decode_logits(r.content.config_records[keys.REPLY][keys.LOGITS_BLOB]) for r in (answered, via_main)]
    print(json.dumps({
        "describe": {k: v for k, v in described.content.config_records[keys.REPLY].items()},
        "ids": [d.ids.tolist() for d in decoded],
        "logits": [d.logits.tolist() for d in decoded],
        "metrics": dict(answered.content.metric_records[keys.METRICS]),
        "heavy": sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules),
    }))
""")


def test_answers_from_the_export_without_importing_torch(tweets_export):
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(tweets_export), json.dumps(IDS)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    assert out["describe"] == {
        keys.ROLE: keys.ROLE_INFERENCE,
        keys.CLIENT_ID: "client-2",
        keys.CLIENT_INDEX: 2,
        keys.MODEL: "minilm-l3",
        keys.NUM_EXAMPLES: 0,
        keys.LABEL_COUNTS: [0, 0, 0],
    }
    assert out["ids"] == [IDS, IDS]
    assert out["logits"][0] == out["logits"][1]  # the device app and the main app give the same answer
    expected = EdgePredictor(tweets_export).predict_logits(
        build_federation_data(SMOKE.data).public_texts(np.array(IDS))
    )
    np.testing.assert_allclose(out["logits"][0], expected, atol=2e-3, rtol=2e-3)  # float16 on the wire
    assert 0.0 <= out["metrics"]["acc_global"] <= 1.0 and out["metrics"]["seconds"] > 0


def test_predictor_is_loaded_once_per_folder(tweets_export):
    assert inference.predictor_for(tweets_export) is inference.predictor_for(str(tweets_export) + "/")


def _broken(kind, tweets_export, tmp_path):
    """An export folder that cannot be used, and the path an error must name."""
    folder = tmp_path / kind
    if kind == "missing":
        return folder, folder
    shutil.copytree(tweets_export, folder)
    target = folder / ("model.onnx" if kind == "truncated-model" else "manifest.json")
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    return folder, target


@pytest.mark.parametrize("app", [device_app, main_app], ids=["inference_app", "app"])
@pytest.mark.parametrize("kind", ["missing", "truncated-model", "truncated-manifest"])
@pytest.mark.parametrize("message_type", [keys.MSG_DESCRIBE, keys.MSG_ROUND])
def test_unusable_export_gives_an_error_reply_naming_it(
    app, kind, message_type, tweets_export, tmp_path, make_request, make_context
):
    folder, named = _broken(kind, tweets_export, tmp_path)
    context = make_context({"partition-id": 2, "role": "inference", "export-dir": str(folder)})
    reply = app(make_request(SMOKE, message_type, {keys.ROUND_INDEX: 1, keys.QUERY_IDS: IDS}), context)
    assert reply.has_error()
    assert str(named.resolve()) in reply.error.reason


def test_labels_that_do_not_match_the_federation_are_refused(tweets_export, make_request, make_context):
    config = preset_config("smoke", {"data.dataset": "bbc"})
    context = make_context({"partition-id": 0, "role": "inference", "export-dir": str(tweets_export)})
    reply = device_app(make_request(config, keys.MSG_DESCRIBE), context)
    assert reply.has_error()
    assert "has 3 labels" in reply.error.reason and "'bbc' has 5 classes" in reply.error.reason


def test_device_app_refuses_other_roles(tweets_export, make_request, make_context):
    reply = device_app(make_request(SMOKE, keys.MSG_DESCRIBE), make_context({"partition-id": 0}))
    assert reply.has_error() and "serves role='inference' nodes only" in reply.error.reason


def test_public_ids_outside_the_pool_are_a_bad_request(tweets_export, make_request, make_context):
    context = make_context({"partition-id": 2, "role": "inference", "export-dir": str(tweets_export)})
    reply = device_app(make_request(SMOKE, keys.MSG_ROUND, {keys.ROUND_INDEX: 1, keys.QUERY_IDS: [0, 999]}), context)
    assert reply.has_error() and reply.error.code == 400 and "public ids outside 0..47" in reply.error.reason
