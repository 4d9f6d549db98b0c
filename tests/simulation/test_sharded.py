"""``federation.isolation = sharded:S`` (simulation/sharded.py): the shard assignment, the configuration check, and,
end to end on the smoke preset, a sharded:2 run and the forgetting of one client.

The smoke federation has 3 clients: shard 0 holds client-0 and client-2, shard 1 holds client-1. Forgetting
client-2 retrains shard 0 alone (client-0 answers again); its teacher must equal, bit for bit, shard 0's
federation run from scratch without client-2, and the global student distilled again must equal the one
distilled from that teacher and shard 1's untouched one (tolerance 0.0: the runs are deterministic).
"""

import json

import numpy as np
import pytest

from nebula.common.config import ConfigError, NebulaConfig
from nebula.common.presets import preset_config
from nebula.common.probabilities import softmax
from nebula.common.run_folder import RunFolder
from nebula.simulation.ensemble import distil_global_student, ensemble_targets, load_global_student
from nebula.simulation.sharded import (
    MANIFEST,
    Manifest,
    assign,
    forget,
    run_shard,
    run_sharded,
    shard_config,
    table_rows,
    write_results,
)

FORGET = "client-2"
SHARDED = {"federation.isolation": "sharded:2"}
TOLERANCE = 0.0


# -- fast: assignment, ensemble, configuration ------------------------------------------------------------
def test_assignment_is_round_robin_balanced_and_stable():
    assert assign(5, 2) == {"client-0": 0, "client-1": 1, "client-2": 0, "client-3": 1, "client-4": 0}
    small, large = assign(10, 3), assign(13, 3)
    assert all(large[c] == s for c, s in small.items()), "a client joining moved another one"
    sizes = np.bincount(list(large.values()))
    assert sizes.max() - sizes.min() <= 1
    for shards, clients in ((1, 3), (4, 3)):
        with pytest.raises(ValueError, match="2 <= S"):
            assign(clients, shards)


def test_manifest_members_leave_out_excluded_and_forgotten(tmp_path):
    manifest = Manifest(level="sharded:2", seed=0, assignment=assign(5, 2), excluded=["client-4"], folders=["a", "b"])
    assert manifest.members(0) == ["client-0", "client-2"] and manifest.members(1) == ["client-1", "client-3"]
    manifest.forgotten.append("client-3")
    manifest.write(tmp_path)
    again = Manifest.read(tmp_path)
    assert again == manifest and again.members(1) == ["client-1"]
    shards = json.loads((tmp_path / MANIFEST).read_text())["shards"]
    assert shards == [
        {"shard": 0, "clients": ["client-0", "client-2"], "folder": "a"},
        {"shard": 1, "clients": ["client-1"], "folder": "b"},
    ]
    with pytest.raises(ValueError, match="not a sharded run's manifest"):
        Manifest.read(tmp_path / "nowhere")


def test_ensemble_targets_average_the_shard_teachers_softmaxes():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    mixed = ensemble_targets([a, b], temperature=2.0)
    assert mixed.shape == (4, 3) and np.allclose(mixed.sum(axis=1), 1.0)
    assert np.allclose(mixed, (softmax(a, temperature=2.0) + softmax(b, temperature=2.0)) / 2)
    assert np.allclose(ensemble_targets([a, a], temperature=1.0), softmax(a))  # identical teachers: one teacher
    with pytest.raises(ValueError, match="every shard is empty"):
        ensemble_targets([], temperature=1.0)


@pytest.mark.parametrize("level, shards", [("sharded:2", 2), ("sharded:5", 5), ("collaborative", None)])
def test_config_accepts_sharded_levels(level, shards):
    config = NebulaConfig.from_flat({"federation.isolation": level, "data.num_clients": 5})
    assert config.federation.shard_count() == shards


@pytest.mark.parametrize(
    "level, message",
    [
        ("sharded:1", "S >= 2"),
        ("sharded:0", "S >= 2"),
        ("sharded", "S >= 2"),
        ("sharded:x", "S >= 2"),
        ("sharded:2.5", "S >= 2"),
        ("sharded: 2", "S >= 2"),
        ("sharded:6", r"6 shards for data.num_clients \(5\)"),
        ("shared:2", "must be one of collaborative, isolated or sharded:S"),
    ],
)
def test_config_refuses_bad_shard_counts(level, message):
    with pytest.raises(ConfigError, match=f"federation.isolation.*{message}"):
        NebulaConfig.from_flat({"federation.isolation": level, "data.num_clients": 5})


def test_one_federation_refuses_a_sharded_level(tmp_path):
    """The engine and the server run one federation: a sharded config handed to them straight is refused,
    not silently run collaboratively."""
    from nebula.server.federation import Federation
    from nebula.simulation.engine import simulate

    config = preset_config("smoke", {"federation.isolation": "sharded:2", "federation.output_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="sharded:2"):
        simulate(config)
    with pytest.raises(ConfigError, match="nebula simulate --isolation sharded:S"):
        Federation(None, config)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_a_shard_runs_its_clients_only_and_collaboratively(tmp_path):
    config = preset_config("smoke", {**SHARDED, "federation.exclude_clients": "client-0"})
    shard = shard_config(config, ["client-1"], tmp_path / "shard-1")
    assert shard.federation.isolation == "collaborative" and shard.federation.min_replies == 1
    assert shard.federation.excluded() == {"client-0", "client-2"}
    assert shard.federation.output_dir == str(tmp_path / "shard-1")


def _round(acc: float) -> dict:
    return {
        "round": 1,
        "mean_client_acc": acc,
        "min_client_acc": acc - 0.1,
        "mean_client_acc_own": acc,
        "teacher_acc": acc,
        "student_acc": acc,
        "bytes_up_per_client": 100.0,
        "bytes_down_per_client": 200.0,
        "seconds": 5.0,
    }


def test_the_results_table_has_a_row_per_shard_and_one_for_the_ensemble(tmp_path):
    results = {
        "level": "sharded:2",
        "shards": [
            {"shard": 0, "clients": ["client-0", "client-2"], "history": [_round(0.6)], "seconds": 10.0},
            {"shard": 1, "clients": ["client-1"], "history": [_round(0.3)], "seconds": 8.0},
        ],
        "global_student": {"student_acc": 0.55, "student_f1": 0.4, "student_top_share": 0.5, "ensemble_acc": 0.7},
        "total": {"client_rounds": 3, "seconds": 20.0},
        "majority_rate": 0.5,
        "config": {"federation.aggregation": "mean"},
    }
    rows = table_rows(results)
    assert [r["method"] for r in rows] == [
        "shard-0 (client-0, client-2)",
        "shard-1 (client-1)",
        "nebula FD sharded:2 (mean, ensemble)",
    ]
    whole = rows[-1]
    assert whole["mean client acc"] == pytest.approx((2 * 0.6 + 0.3) / 3)  # over clients, not shards
    assert whole["min client"] == pytest.approx(0.2) and whole["teacher"] == 0.7 and whole["global student"] == 0.55
    text = write_results(tmp_path, results, [{"method": "local-only", "mean client acc": 0.4}])
    assert "| nebula FD sharded:2 (mean, ensemble) | 50.0 |" in text and "| local-only | 40.0 |" in text
    assert json.loads((tmp_path / "results.json").read_text())["table"][-1]["method"] == "local-only"


# -- end to end: a sharded:2 smoke run, forgetting client-2 -----------------------------------------------------
@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    base = tmp_path_factory.mktemp("sharded")
    config = preset_config("smoke", {**SHARDED, "federation.output_dir": str(base / "run")})
    results = run_sharded(config)
    cost = forget(base / "run", FORGET)
    scratch = run_shard(config, 0, ["client-0"], base / "scratch-shard-0")
    return {"config": config, "out": base / "run", "results": results, "cost": cost, "scratch": scratch.folder}


def _last_states(folder):
    from nebula.learning.models import load_checkpoint

    run = RunFolder(folder)
    return load_checkpoint(run.checkpoint(run.checkpoint_rounds()[-1]))  # (teacher, shard's own student)


def _largest_difference(a, b) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _contributors(folder) -> set[str]:
    from nebula.server.ledger import Ledger

    ledger = Ledger(RunFolder(folder).ledger)
    try:
        return {c.client_id for _, c in ledger.contributions(ledger.runs()[-1])}
    finally:
        ledger.close()


@pytest.mark.e2e
def test_the_run_records_its_shards_and_has_a_global_student(sharded):
    out, results = sharded["out"], sharded["results"]
    manifest = Manifest.read(out)
    assert manifest.assignment == assign(3, 2) and manifest.excluded == []
    assert _contributors(out / "shard-0") == {"client-0", "client-2"}
    assert _contributors(out / "shard-1") == {"client-1"}
    assert [s["clients"] for s in results["shards"]] == [["client-0", "client-2"], ["client-1"]]
    assert all(0.0 <= s["teacher_acc"] <= 1.0 for s in results["shards"])
    assert 0.0 <= results["global_student"]["student_acc"] <= 1.0
    assert [s["client_rounds"] for s in results["shards"]] == [2 * 2, 1 * 2]
    student = out / "global-student"
    assert (student / "adapter_model.safetensors").is_file() and (student / "student.pt").is_file()
    assert json.loads((student / "nebula.json").read_text())["role"] == "global-student"
    table = json.loads((out / "results.json").read_text())["table"]
    assert [row["method"].split(" ")[0] for row in table] == ["shard-0", "shard-1", "nebula"]
    assert "sharded:2" in (out / "results.md").read_text()


@pytest.mark.e2e
def test_forgetting_retrains_only_the_clients_shard(sharded):
    cost, out = sharded["cost"], sharded["out"]
    assert cost["shard"] == 0 and cost["shard_clients"] == ["client-0"]
    assert (cost["isolation"], cost["mode"], cost["exact"]) == ("sharded:2", "shard-retrain", True)
    assert cost["client_rounds"] == 1 * 2 and cost["full_retrain"]["client_rounds"] == 1 * 2 + 1 * 2
    assert cost["seconds"] > 0 and cost["full_retrain"]["seconds"] > 0
    assert cost["compute_seconds"] > 0 and cost["full_retrain"]["compute_seconds"] > cost["compute_seconds"]
    manifest = Manifest.read(out)
    assert manifest.forgotten == [FORGET] and manifest.members(0) == ["client-0"]
    assert manifest.folders == ["unlearning/client-2/shard-0", "shard-1"]  # shard 1 kept as it was
    assert manifest.global_student == "unlearning/client-2/global-student"
    assert _contributors(out / manifest.folders[0]) == {"client-0"}
    assert forget(out, FORGET) == json.loads(json.dumps(cost))  # again: the recorded cost, nothing trains
    with pytest.raises(ValueError, match="client-7 took no part"):
        forget(out, "client-7")


@pytest.mark.e2e
def test_the_forgotten_shard_equals_the_shard_run_from_scratch_without_the_client(sharded):
    out = sharded["out"]
    forgotten = _last_states(out / "unlearning" / FORGET / "shard-0")
    scratch = _last_states(sharded["scratch"])
    for after, reference in zip(forgotten, scratch, strict=True):  # the shard's teacher, then its student
        assert _largest_difference(after, reference) <= TOLERANCE
    original = _last_states(out / "shard-0")
    assert _largest_difference(original[0], forgotten[0]) > 0, "forgetting left the shard's teacher as it was"


@pytest.mark.e2e
def test_the_global_student_equals_the_one_distilled_from_the_scratch_teachers(sharded, tmp_path):
    out = sharded["out"]
    distil_global_student(sharded["config"], [sharded["scratch"], out / "shard-1"], tmp_path / "reference")
    after = load_global_student(out / "unlearning" / FORGET / "global-student")
    assert _largest_difference(after, load_global_student(tmp_path / "reference")) <= TOLERANCE
    assert _largest_difference(after, load_global_student(out / "global-student")) > 0
