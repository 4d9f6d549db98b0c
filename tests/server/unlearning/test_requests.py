"""The request store: stored before acknowledged, idempotent, no replay, resumable order."""

import subprocess
import sys

import pytest

from nebula.server.exceptions import (
    IdempotencyConflict,
    InvalidUnlearnRequest,
    ReplayedRequest,
    UnknownRequest,
    UnlearningError,
)
from nebula.server.unlearning import available_modes
from nebula.server.unlearning.requests import RequestStore, check_submission

from .conftest import snapshot

OP = "sha256:" + "ab" * 32


@pytest.fixture
def store(tmp_path):
    s = RequestStore(tmp_path / "store.sqlite")
    yield s
    s.close()


def _submit(store, **over):
    args = dict(client_id="client-1", reason="art. 17", mode="purge", idempotency_key="k1", operator_key=OP, nonce=None)
    args.update(over)
    return store.submit(**args)


def test_submit_is_committed_before_it_returns(store, tmp_path):
    request, created = _submit(store)
    assert created and request.status == "queued" and request.attempts == 0
    again = RequestStore(tmp_path / "store.sqlite")  # another connection, as after a restart
    assert again.get(request.request_id) == request


def test_same_key_same_content_gives_the_same_request(store):
    first, _ = _submit(store)
    second, created = _submit(store, nonce="n" * 16)
    assert not created and second.request_id == first.request_id
    assert len(store.list()) == 1


def test_same_key_other_content_is_refused_and_changes_nothing(store, tmp_path):
    first, _ = _submit(store)
    before = snapshot(tmp_path / "store.sqlite")
    for change in ({"client_id": "client-2"}, {"mode": "reaggregate"}, {"reason": "other"}):
        with pytest.raises(IdempotencyConflict, match=f"k1.*{first.request_id}"):
            _submit(store, nonce="x" * 16, **change)
    assert snapshot(tmp_path / "store.sqlite") == before


def test_keys_are_per_operator(store):
    mine, _ = _submit(store)
    theirs, created = _submit(store, operator_key="sha256:" + "cd" * 32)
    assert created and theirs.request_id != mine.request_id


def test_a_nonce_is_accepted_once(store, tmp_path):
    _submit(store, nonce="n" * 16)
    before = snapshot(tmp_path / "store.sqlite")
    with pytest.raises(ReplayedRequest, match="nonce"):
        _submit(store, idempotency_key="k2", nonce="n" * 16)
    assert snapshot(tmp_path / "store.sqlite") == before


def test_old_nonces_are_pruned(tmp_path):
    store = RequestStore(tmp_path / "s.sqlite", nonce_retention_s=-1.0)  # everything is older than the retention
    _submit(store, nonce="n" * 16)
    _submit(store, idempotency_key="k2", nonce="m" * 16)
    assert snapshot(tmp_path / "s.sqlite", tables=("unlearn_nonces",))["unlearn_nonces"][0][1] == "m" * 16


def test_lifecycle_and_resume_order(store):
    a, _ = _submit(store, idempotency_key="a")
    b, _ = _submit(store, idempotency_key="b")
    assert [r.request_id for r in store.pending()] == [a.request_id, b.request_id]
    running = store.mark_running(b.request_id)
    assert running.status == "running" and running.attempts == 1 and running.started_at
    assert [r.request_id for r in store.pending()] == [b.request_id, a.request_id]  # left running: resumed first
    done = store.mark_done(b.request_id, '{"certificate": 1}')
    assert done.status == "done" and done.certificate_json and done.finished_at
    failed = store.mark_failed(a.request_id, "LedgerError: disk full")
    assert failed.status == "failed" and "disk full" in failed.error
    assert store.pending() == []
    assert [r.request_id for r in store.list(status="done")] == [b.request_id]
    with pytest.raises(ValueError, match="status"):
        store.list(status="nope")


def test_unknown_request_id(store):
    with pytest.raises(UnknownRequest, match="nope"):
        store.get("nope")
    with pytest.raises(UnknownRequest):
        store.mark_done("nope", "{}")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"client_id": ""}, "client_id is empty"),
        ({"client_id": "   "}, "client_id is empty"),
        ({"client_id": " client-1"}, "leading or trailing"),
        ({"client_id": "x" * 257}, "at most 256"),
        ({"reason": ""}, "reason is empty"),
        (
            {"mode": "forget-harder"},
            "unknown unlearning mode 'forget-harder'; available: exact-replay, fast-correction, purge, reaggregate",
        ),
        ({"idempotency_key": ""}, "idempotency_key is empty"),
    ],
)
def test_malformed_submissions_name_the_field(change, message):
    args = dict(client_id="client-1", reason="r", mode="purge", idempotency_key="k", modes=available_modes())
    args.update(change)
    with pytest.raises(InvalidUnlearnRequest, match=message):
        check_submission(**args)


def test_two_executors_on_one_store_carry_a_request_out_once(tmp_path):
    """A second store on the same file (another executor) cannot claim a request a live process holds;
    a claim whose process is gone is taken over."""
    path = tmp_path / "ledger.sqlite"
    first, second = RequestStore(path), RequestStore(path)
    request = first.submit(client_id="client-1", reason="r", mode="purge", idempotency_key="k", operator_key="op")[0]
    assert first.claim(request.request_id).status == "running"
    assert second.claim(request.request_id) is None  # held by this (live) process
    with pytest.raises(UnlearningError, match="held by another running executor"):
        second.mark_running(request.request_id)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    first._db.execute("UPDATE unlearn_claims SET pid = ? WHERE request_id = ?", (int(dead.stdout), request.request_id))
    first._db.commit()
    taken = second.claim(request.request_id)  # the holder is gone: resumed
    assert taken is not None and taken.attempts == 2
    first.close()
    second.close()
