"""The long-lived local worker (client/worker.py): a real `nebula worker` process answers forwarded messages."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from nebula.client import app as client_app
from nebula.common import keys
from nebula.common.presets import preset_config
from nebula.common.wire import decode_logits, encode_logits


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    folder = tmp_path_factory.mktemp("w")
    sock, log = folder / "node.sock", folder / "worker.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nebula.cli.main", "worker", "--socket", str(sock)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 300  # imports torch and transformers: minutes on 2 loaded cores
    while not (sock.exists() and sock.with_name("node.sock.key").exists()) and time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        time.sleep(0.2)
    if not sock.with_name("node.sock.key").exists():  # else the tests below would pass through the fallback
        proc.kill()
        pytest.fail(f"the worker did not open {sock} in 300 s: {log.read_text()[-2000:]}")
    yield sock, log
    proc.kill()
    proc.wait()


def _node(sock, partition=0):
    return {"partition-id": partition, "num-partitions": 3, "worker-socket": str(sock)}


def test_a_round_is_computed_by_the_worker_and_the_state_comes_back(worker, make_request, make_context):
    sock, log = worker
    config = preset_config("smoke")
    context = make_context(_node(sock))
    ids = list(range(8))
    reply = client_app.train_round(
        make_request(
            config, keys.MSG_ROUND, {keys.ROUND_INDEX: 1, keys.QUERY_IDS: ids, keys.CLASS_COUNTS: [30, 30, 30]}
        ),
        context,
    )
    assert not reply.has_error(), reply.error
    decoded = decode_logits(reply.content.config_records[keys.REPLY][keys.LOGITS_BLOB], num_classes=3)
    assert decoded.ids.tolist() == ids and np.isfinite(decoded.logits).all()
    assert "edge-adapter" in context.state.array_records  # the client's adapter came back into Flower's context
    assert log.read_text().count("handled a message") == 1


def test_a_bad_request_gets_the_handlers_error_reply(worker, make_request, make_context):
    sock, log = worker
    fields = {keys.ROUND_INDEX: 1, keys.CONSENSUS_BLOB: encode_logits(np.arange(4), np.zeros((4, 3), np.float32))}
    reply = client_app.teach(make_request(preset_config("smoke"), keys.MSG_TEACH, fields), make_context(_node(sock)))
    assert reply.has_error() and "sent to edge client client-0" in reply.error.reason
    malformed = client_app.teach(
        make_request(preset_config("smoke"), keys.MSG_TEACH, {keys.ROUND_INDEX: 1}), make_context(_node(sock))
    )
    assert malformed.has_error() and "'consensus' is missing" in malformed.error.reason


def test_without_a_worker_the_clientapp_handles_the_message(tmp_path, make_request, make_context, caplog):
    context = make_context(_node(tmp_path / "none.sock"))
    reply = client_app.describe(make_request(preset_config("smoke"), keys.MSG_DESCRIBE), context)
    assert not reply.has_error() and reply.content.config_records[keys.REPLY][keys.ROLE] == keys.ROLE_CLIENT
    assert "no worker on" in caplog.text


def test_a_wrong_key_is_an_error_not_a_silent_fallback(worker, tmp_path, make_request, make_context):
    sock, _ = worker
    link = tmp_path / "node.sock"
    link.symlink_to(sock)
    (tmp_path / "node.sock.key").write_bytes(b"not the key")
    reply = client_app.describe(make_request(preset_config("smoke"), keys.MSG_DESCRIBE), make_context(_node(link)))
    assert reply.has_error() and "refused the key" in reply.error.reason


def test_a_message_type_the_worker_does_not_know_is_named(worker, make_request, make_context):
    from nebula.client.worker_link import forward

    sock, _ = worker
    with pytest.raises(RuntimeError, match="no handler for message type 'query.nope'"):
        forward(make_request(preset_config("smoke"), "query.nope"), make_context(_node(sock)), str(sock))
