"""``nebula unlearn benchmark`` on an isolated federation with a canary: exact-replay's models equal the retrained
federation's parameter by parameter, and so does the canary's success (simulation/unlearning_levels.py)."""

import pytest

from nebula.common.presets import preset_config
from nebula.simulation.unlearning_benchmark import UnlearningBenchmark, run_benchmark

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    config = preset_config(
        "smoke", {"federation.isolation": "isolated", "data.canary": "1:0.3:0", "federation.rounds": 2}
    )
    bench = UnlearningBenchmark(
        config, tmp_path_factory.mktemp("levels"), client="client-1", modes=("exact-replay", "fast-correction")
    )
    return run_benchmark(bench, say=lambda line: None).summary


def test_exact_replay_is_exact_and_says_so(summary):
    exact = summary["exact-replay"]
    assert exact["exact"] is True and exact["client_rounds"] == 0
    assert exact["param_distance"] == {"teacher": 0.0, "student": 0.0}
    assert exact["canary_success"] == exact["canary_success_retrained"]
    assert exact["teacher_acc"] == summary["retrained"]["teacher_acc"]


def test_the_approximate_mode_says_so_and_the_original_differs(summary):
    assert summary["fast-correction"]["exact"] is False
    assert summary["original"]["param_distance"]["teacher"] > 0
    assert summary["retrained"]["client_rounds"] == 2 * 2  # two clients left, two rounds
    assert summary["retrained"]["param_distance"] == {"teacher": 0.0, "student": 0.0}
    for variant in summary.values():
        assert all(0.0 <= v <= 1.0 for v in variant["canary_success"].values())


def test_the_computation_is_counted_on_every_node_that_did_it(summary):
    retrained, exact = summary["retrained"], summary["exact-replay"]
    # The federation's: every client's and the teacher node's CPU seconds, from their replies (metrics.jsonl).
    assert retrained["compute_seconds"] > 0 and summary["original"]["compute_seconds"] > 0
    assert exact["compute_seconds"] > 0  # the server's replay, from its manifest
    assert exact["compute_speedup"] == pytest.approx(retrained["compute_seconds"] / exact["compute_seconds"])
    assert 0.0 <= retrained["mean_client_acc"] <= 1.0  # a fraction, like teacher_acc and student_acc
