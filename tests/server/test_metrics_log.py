"""server/metrics_log.py: the per-round JSON lines, and the computation they report."""

import pytest

from nebula.server.metrics_log import MetricsLog


def _round(teacher, *clients):
    return {"teacher_compute_seconds": teacher, "clients": {f"client-{i}": c for i, c in enumerate(clients)}}


def test_records_come_back_in_order(tmp_path):
    log = MetricsLog(tmp_path / "run" / "metrics.jsonl")
    assert log.read() == []
    log.append({"round": 1})
    log.append({"round": 2})
    assert [r["round"] for r in log.read()] == [1, 2]


def test_compute_seconds_sums_every_client_and_the_teacher_over_the_rounds(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append(_round(2.0, {"compute_seconds": 1.5, "acc_global": 0.5}, {"compute_seconds": 0.5}))
    log.append(_round(3.0, {"compute_seconds": 1.0}))
    assert log.compute_seconds() == pytest.approx(2.0 + 1.5 + 0.5 + 3.0 + 1.0)


@pytest.mark.parametrize(
    "record",
    [_round(None, {"compute_seconds": 1.0}), _round(1.0, {"compute_seconds": 1.0}, {"acc_global": 0.4})],
    ids=["teacher without it", "a client without it"],
)
def test_compute_seconds_is_unknown_when_a_node_did_not_report_it(tmp_path, record):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append(_round(1.0, {"compute_seconds": 1.0}))
    log.append(record)
    assert log.compute_seconds() is None
