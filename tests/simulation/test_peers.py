"""The peers and bounds of simulation/baselines/: each rule through a table of small cases with known
answers, the registry, and one end-to-end run per method on the real small model (smoke preset)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nebula.common.presets import preset_config
from nebula.simulation.baselines import (
    BASELINES,
    KINDS,
    MethodError,
    available_methods,
    get_method,
    method_kind,
)
from nebula.simulation.baselines.common import public_ids
from nebula.simulation.baselines.dsfl import era
from nebula.simulation.baselines.fedavg_lora import ProximalAdamW, fedavg, proximal_gradient
from nebula.simulation.baselines.fedavg_tuned import pick_cell, validation_splits
from nebula.simulation.baselines.feddf import ensemble_targets
from nebula.simulation.baselines.fedmd import mean_consensus


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- FedMD: the consensus is the unweighted mean of the clients' class scores -------------------------

MEAN_CONSENSUS_CASES = {
    "two clients": ([[[1.0, 3.0]], [[3.0, 5.0]]], [[2.0, 4.0]]),
    "one client is itself": ([[[0.5, -2.0, 7.0]]], [[0.5, -2.0, 7.0]]),
    "disagreeing clients give a flat row": (
        [[[3.0, 0.0, 0.0]], [[0.0, 3.0, 0.0]], [[0.0, 0.0, 3.0]]],
        [[1.0, 1.0, 1.0]],
    ),
    "rows stay apart": ([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [0.0, 4.0]]], [[2.0, 0.0], [0.0, 3.0]]),
}


@pytest.mark.parametrize("scores, expected", MEAN_CONSENSUS_CASES.values(), ids=MEAN_CONSENSUS_CASES.keys())
def test_fedmd_consensus_is_the_mean_of_the_scores(scores, expected):
    np.testing.assert_allclose(mean_consensus(np.array(scores)), expected)


@pytest.mark.parametrize("scores", [np.zeros((2, 3)), np.zeros((0, 1, 2)), np.array([[[0.0, np.nan]]])])
def test_fedmd_consensus_refuses_bad_scores(scores):
    with pytest.raises(ValueError, match="scores"):
        mean_consensus(scores)


# --- DS-FL: ERA = softmax(mean of the soft labels / T) ---------------------------------------------

ERA_CASES = {
    # mean [0.75, 0.25]; at T = 0.1 the logits are [7.5, 2.5]: a gap of 5
    "sharpened at T=0.1": ([[[1.0, 0.0]], [[0.5, 0.5]]], 0.1, [[_sigmoid(5.0), _sigmoid(-5.0)]]),
    # at T = 0.5 softmax([1.5, 0.5]); sharpening log p instead would give [0.9, 0.1]
    "softmax of probabilities, not of their log": (
        [[[1.0, 0.0]], [[0.5, 0.5]]],
        0.5,
        [[_sigmoid(1.0), _sigmoid(-1.0)]],
    ),
    "T=1 still softens the mean": ([[[1.0, 0.0]], [[0.5, 0.5]]], 1.0, [[_sigmoid(0.5), _sigmoid(-0.5)]]),
    "uniform stays uniform": ([[[1 / 3] * 3], [[1 / 3] * 3]], 0.1, [[1 / 3] * 3]),
    "one-hot is capped by 1/T": (
        [[[1.0, 0.0, 0.0]]],
        0.1,
        [[1 / (1 + 2 * math.exp(-10))] + [math.exp(-10) / (1 + 2 * math.exp(-10))] * 2],
    ),
}


@pytest.mark.parametrize("probs, temperature, expected", ERA_CASES.values(), ids=ERA_CASES.keys())
def test_dsfl_era_has_the_known_sharpened_answer(probs, temperature, expected):
    out = era(np.array(probs), temperature=temperature)
    np.testing.assert_allclose(out, expected, rtol=1e-9)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)


@pytest.mark.parametrize(
    "probs, temperature, match",
    [
        (np.full((1, 1, 2), 0.5), 0.0, "temperature"),
        (np.array([[[0.7, 0.7]]]), 0.1, "probabilities"),
        (np.array([[[1.5, -0.5]]]), 0.1, "probabilities"),
        (np.full((1, 2), 0.5), 0.1, "probs"),
    ],
)
def test_dsfl_era_refuses_bad_input(probs, temperature, match):
    with pytest.raises(ValueError, match=match):
        era(probs, temperature=temperature)


# --- FedAvg / FedDF: adapter tensors weighted by example counts --------------------------------------

FEDAVG_CASES = {
    "weighted 1:3": (
        [{"a": [0.0, 0.0], "b": [[2.0]]}, {"a": [4.0, 8.0], "b": [[6.0]]}],
        [1.0, 3.0],
        {"a": [3.0, 6.0], "b": [[5.0]]},
    ),
    "equal counts are the plain mean": ([{"a": [1.0]}, {"a": [2.0]}, {"a": [6.0]}], [5.0, 5.0, 5.0], {"a": [3.0]}),
    "one client is itself": ([{"a": [1.5, -2.0]}], [7.0], {"a": [1.5, -2.0]}),
    "only the ratio matters": ([{"a": [0.0]}, {"a": [10.0]}], [200.0, 50.0], {"a": [2.0]}),
}


@pytest.mark.parametrize("states, weights, expected", FEDAVG_CASES.values(), ids=FEDAVG_CASES.keys())
def test_fedavg_weights_adapter_tensors_by_example_counts(states, weights, expected):
    out = fedavg([{k: torch.tensor(v) for k, v in s.items()} for s in states], weights)
    assert set(out) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(out[name], torch.tensor(value))


@pytest.mark.parametrize(
    "states, weights, match",
    [
        ([{"a": torch.zeros(1)}], [0.0], "> 0"),
        ([{"a": torch.zeros(1)}, {"a": torch.zeros(1)}], [1.0], "one weight per state"),
        ([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}], [1.0, 1.0], "other tensor names"),
        ([], [], "one weight per state"),
    ],
)
def test_fedavg_refuses_bad_input(states, weights, match):
    with pytest.raises(ValueError, match=match):
        fedavg(states, weights)


ENSEMBLE_CASES = {
    "opposite clients cancel": ([[[0.0, 2.0]], [[2.0, 0.0]]], 1.0, [[0.5, 0.5]]),
    "mean logits [0, ln 3]": ([[[0.0, 0.0]], [[0.0, 2 * math.log(3)]]], 1.0, [[0.25, 0.75]]),
    "temperature softens": ([[[0.0, 2 * math.log(3)]]], 2.0, [[0.25, 0.75]]),
}


@pytest.mark.parametrize("logits, temperature, expected", ENSEMBLE_CASES.values(), ids=ENSEMBLE_CASES.keys())
def test_feddf_distils_the_softmax_of_the_mean_logits(logits, temperature, expected):
    np.testing.assert_allclose(ensemble_targets(np.array(logits), temperature=temperature), expected)


# --- FedProx: the proximal term's gradient and the optimizer that adds it ---------------------------


@pytest.mark.parametrize(
    "w, anchor, mu, expected",
    [
        ([1.0, 2.0], [0.0, 0.0], 0.1, [0.1, 0.2]),
        ([1.0, -1.0], [1.0, 1.0], 2.0, [0.0, -4.0]),
        ([3.0], [1.0], 0.0, [0.0]),
    ],
)
def test_proximal_gradient_is_mu_times_the_distance(w, anchor, mu, expected):
    torch.testing.assert_close(proximal_gradient(torch.tensor(w), torch.tensor(anchor), mu=mu), torch.tensor(expected))


def test_proximal_adamw_pulls_toward_the_anchor_only_with_mu():
    moved = {}
    for mu in (0.0, 1.0):
        w = torch.nn.Parameter(torch.tensor([1.0]))
        opt = ProximalAdamW([w], anchor=[torch.tensor([0.0])], mu=mu, lr=0.1)
        w.grad = torch.zeros(1)  # the data term is flat: only the proximal term can move w
        opt.step()
        moved[mu] = 1.0 - w.item()
    assert moved[0.0] < 0.01  # weight decay only
    assert moved[1.0] == pytest.approx(0.1, abs=0.01)  # Adam's first step is lr * sign(grad)


# --- the tuning picker chooses the best validation cell -----------------------------------------------

PICK_CASES = {
    "best score": ({(1, 1e-3): 0.5, (2, 1e-3): 0.7, (5, 1e-3): 0.6}, (2, 1e-3)),
    "ties go to the first (cheaper) cell": ({(1, 2e-3): 0.7, (2, 2e-3): 0.7, (5, 1e-3): 0.6}, (1, 2e-3)),
    "NaN ranks lowest": ({(1, 1e-3): float("nan"), (2, 5e-3): 0.1}, (2, 5e-3)),
    "all NaN: the first": ({(5, 1e-3): float("nan"), (1, 1e-3): float("nan")}, (5, 1e-3)),
    "last cell can win": ({(1, 1e-3): 0.1, (1, 2e-3): 0.2, (5, 5e-3): 0.9}, (5, 5e-3)),
}


@pytest.mark.parametrize("scores, expected", PICK_CASES.values(), ids=PICK_CASES.keys())
def test_pick_cell_chooses_the_best_validation_cell(scores, expected):
    assert pick_cell(scores) == expected


def test_pick_cell_refuses_an_empty_grid():
    with pytest.raises(ValueError, match="no grid cell"):
        pick_cell({})


def test_validation_splits_hold_out_part_of_each_clients_training_data():
    clients = (SimpleNamespace(train=np.arange(0, 10)), SimpleNamespace(train=np.arange(20, 25)))
    fits, val = validation_splits(SimpleNamespace(clients=clients), fraction=0.2, seed=0)
    assert [len(f) for f in fits] == [8, 4]
    for fit, client in zip(fits, clients):
        assert set(fit) | (set(val) & set(client.train)) == set(client.train)
        assert not set(fit) & set(val)
    assert len(val) == 3


# --- registry and shared pieces --------------------------------------------------------------------


def test_every_method_is_registered_with_a_kind_and_a_cli_entry():
    names = available_methods()
    assert {"local-only", "centralized", "oracle", "fedavg-lora", "fedavg-tuned", "fedprox"} <= set(names)
    assert {"fedmd", "dsfl", "feddf"} <= set(names)
    assert set(BASELINES) == set(names)
    assert all(method_kind(n) in KINDS for n in names)
    assert [method_kind(n) for n in ("fedmd", "dsfl", "feddf", "oracle")] == [
        "logit-only",
        "logit-only",
        "weights",
        "bound",
    ]


def test_registry_names_what_is_wrong():
    with pytest.raises(MethodError, match="unknown method 'nope'; available: centralized"):
        get_method("nope")
    with pytest.raises(MethodError, match="'dsfl'.*era_temperature"):
        get_method("dsfl", temperature=0.1)
    assert get_method("fedprox").mu == 0.01 and get_method("fedavg-tuned").mu == 0.0


def test_peers_ask_about_the_federations_public_ids():
    from nebula.server.federation import Federation

    config = preset_config("smoke", {"federation.public_per_round": 20})  # pool 48: round 3 wraps around
    for r in (1, 2, 3):
        expected = Federation.public_ids(SimpleNamespace(config=config), r)
        np.testing.assert_array_equal(public_ids(config, r), expected)


# --- end to end: every method on the real MiniLM-L3, smoke preset (3 clients, 2 rounds) ----------------

FAST = {
    "fedavg-tuned": {"local_epochs": (1, 2), "lrs": (1e-3, 5e-3)},
    "fedprox": {"local_epochs": (1,), "lrs": (2e-3,)},
}


@pytest.fixture(scope="module")
def smoke():
    from nebula.common.federation_data import build_federation_data

    config = preset_config("smoke", {"train.eval_every": 2})
    return config, build_federation_data(config.data)


def _adapter_nbytes(config, data):
    from nebula.learning.models import learner_for, state_nbytes

    return state_nbytes(learner_for(config, config.model.student, data.num_classes).init_state)


@pytest.mark.e2e
@pytest.mark.parametrize("name", available_methods())
def test_each_method_runs_end_to_end_on_the_small_model(name, smoke):
    from nebula.common.wire import payload_nbytes

    config, data = smoke
    rounds = []
    result = get_method(name, **FAST.get(name, {})).run(data, config, seed=0, on_round=rounds.append)
    kind, R = method_kind(name), config.federation.rounds
    assert result.name == name and result.kind == kind
    figures = [result.student_acc, result.mean_client_acc, result.min_client_acc, result.teacher_acc]
    assert all(0.0 <= f <= 1.0 for f in figures if f is not None)
    if name != "local-only":  # every other method has rounds
        assert [r["round"] for r in rounds] == list(range(1, R + 1))
        assert len(result.curve) == len(result.round_seconds) == R
        assert result.round_seconds == sorted(result.round_seconds)
    if kind == "logit-only":  # FedMD, DS-FL: logits up; the consensus down from round 2
        payload = payload_nbytes(config.federation.public_per_round, data.num_classes, dtype="float16")
        assert result.bytes_up_per_client == payload
        assert result.bytes_down_per_client == payload * (R - 1) / R
        assert result.min_client_acc <= result.mean_client_acc
    elif kind == "weights":
        assert result.bytes_up_per_client == result.bytes_down_per_client == _adapter_nbytes(config, data)
    else:
        assert result.bytes_up_per_client == result.bytes_down_per_client == 0
    if name in ("dsfl", "feddf", "fedavg-lora", "oracle", "centralized"):
        assert result.student_acc == result.curve[-1]


@pytest.mark.e2e
def test_tuned_fedavg_reports_its_grid_and_choice(smoke):
    config, data = smoke
    result = get_method("fedavg-tuned", local_epochs=(1, 2), lrs=(1e-3, 5e-3)).run(data, config, seed=0)
    details = result.details
    assert details["grid"] == {"local_epochs": [1, 2], "lr": [1e-3, 5e-3]}
    cells = {(c["local_epochs"], c["lr"]): c["acc"] for c in details["validation"]}
    assert len(cells) == 4 and all(0.0 <= a <= 1.0 for a in cells.values())
    assert (details["chosen"]["local_epochs"], details["chosen"]["lr"]) == pick_cell(cells)
    assert 0 < details["val_examples"] < sum(len(c.train) for c in data.clients)
    assert result.seconds >= details["tune_seconds"]


# --- the benchmark runner's summary (benchmarks/peers.py) ------------------------------------------------


@pytest.fixture(scope="module")
def runner():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "peers.py"
    spec = importlib.util.spec_from_file_location("peers_runner", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cell(kind, final, curve, seconds, **figures):
    base = dict.fromkeys(("mean_client", "min_client", "mean_client_own", "teacher"))
    base.update(uplink_bytes=0.0, downlink_bytes=0.0, seconds=seconds[-1] if seconds else 1.0)
    return {**base, "kind": kind, "global_student": final, "curve": curve, "round_seconds": seconds, **figures}


def test_runner_summarizes_seeds_and_time_to_accuracy(runner):
    cells = {
        "centralized": {"0": _cell("bound", 0.80, [0.5, 0.8], [1.0, 2.0]), "1": _cell("bound", 0.60, [0.6], [1.0])},
        "fedmd": {
            # 90% of 0.80 = 0.72: first reached in round 3; seed 1 (target 0.54) never reaches it
            "0": _cell("logit-only", None, [0.5, 0.7, 0.72, 0.9], [10.0, 20.0, 30.0, 40.0], mean_client=0.9),
            "1": _cell("logit-only", None, [0.5, 0.5], [10.0, 20.0], mean_client=0.5),
        },
    }
    for c in cells["fedmd"].values():
        c["curve_of"] = "mean_client"
    for c in cells["centralized"].values():
        c["curve_of"] = "global_student"
    methods = runner.summarize(cells, [0, 1])
    assert methods["fedmd"]["kind"] == "logit-only"
    assert methods["fedmd"]["mean_client"] == {
        "mean": 0.7,
        "sd": pytest.approx(0.2828427, abs=1e-6),
        "per_seed": [0.9, 0.5],
    }
    assert methods["fedmd"]["global_student"] == {"mean": None, "sd": None, "per_seed": [None, None]}
    tta = methods["fedmd"]["time_to_accuracy"]
    assert tta["on"] == "mean_client" and tta["targets"] == pytest.approx([0.72, 0.54])
    assert tta["rounds"]["per_seed"] == [3, None] and tta["seconds"]["per_seed"] == [30.0, None]
    assert methods["centralized"]["time_to_accuracy"]["rounds"]["per_seed"] == [2, 1]


def test_runner_refuses_to_resume_a_file_with_other_settings(runner, tmp_path):
    out = tmp_path / "r.json"
    runner.save(out, {"config": {"federation.rounds": 10}, "cells": {"fedmd": {"0": {"seconds": 1.0}}}})
    assert runner.load(out, {"federation.rounds": 10})["cells"] == {"fedmd": {"0": {"seconds": 1.0}}}
    with pytest.raises(SystemExit, match="other settings.*federation.rounds"):
        runner.load(out, {"federation.rounds": 3})
