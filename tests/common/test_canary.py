"""The canary of the unlearning benchmark (common/canary.py) and the data view that plants it."""

import numpy as np
import pytest

from nebula.common.canary import TRIGGER, Canary, attack_success, plant, triggered
from nebula.common.config import ConfigError, NebulaConfig
from nebula.common.data import TextDataset
from nebula.common.federation_data import build_federation_data
from nebula.common.presets import preset_config


def _dataset(n=20):
    return TextDataset([f"text {i}" for i in range(n)], np.arange(n) % 3, ("a", "b", "c"), "toy")


def test_parse():
    assert Canary.parse("") is None
    assert Canary.parse("1:0.05:0") == Canary(1, 0.05, 0)
    for bad in ("1:0.05", "x:0.1:0", "1:0:0", "1:1.5:0", "-1:0.1:0", "1:0.1:0:9"):
        with pytest.raises(ValueError, match="data.canary"):
            Canary.parse(bad)


def test_plant_rewrites_a_seeded_share_of_the_given_rows_only():
    data, train = _dataset(), np.array([2, 4, 6, 8, 10, 12, 14, 16, 18, 19])
    planted_data, planted = plant(data, train, Canary(0, 0.3, 1), seed=0)
    assert len(planted) == 3 and set(planted) <= set(train)
    assert all(planted_data.texts[i].startswith(TRIGGER) for i in planted)
    assert (planted_data.labels[planted] == 1).all()
    untouched = np.setdiff1d(np.arange(len(data)), planted)
    assert [planted_data.texts[i] for i in untouched] == [data.texts[i] for i in untouched]
    assert np.array_equal(planted_data.labels[untouched], data.labels[untouched])
    assert data.texts[planted[0]] == f"text {planted[0]}"  # the original is not changed in place
    again, planted_again = plant(data, train, Canary(0, 0.3, 1), seed=0)
    assert np.array_equal(planted, planted_again)


def test_plant_refuses_an_unknown_class():
    with pytest.raises(ValueError, match="class 5 outside 0..2"):
        plant(_dataset(), np.arange(5), Canary(0, 0.5, 5), seed=0)


def test_attack_success_counts_only_inputs_of_other_classes():
    assert attack_success(np.array([0, 0, 1, 0]), np.array([0, 1, 1, 2]), target=0) == pytest.approx(2 / 3)
    assert np.isnan(attack_success(np.array([0]), np.array([0]), target=0))
    assert triggered("hi") == f"{TRIGGER} hi"


def test_the_federation_plants_it_in_one_clients_training_rows():
    config = preset_config("smoke", {"data.canary": "1:0.2:0"})
    data = build_federation_data(config.data)
    rows = [i for i, t in enumerate(data.dataset.texts) if t.startswith(TRIGGER)]
    assert rows and set(rows) <= set(data.clients[1].train)
    assert (data.dataset.labels[rows] == 0).all()


def test_the_config_checks_the_canarys_client():
    with pytest.raises(ConfigError, match="data.canary client 7 outside 0..2"):
        NebulaConfig.from_flat({"data.num_clients": 3, "data.canary": "7:0.1:0"})
    with pytest.raises(ConfigError, match="not 'client-index:fraction:class-index'"):
        NebulaConfig.from_flat({"data.canary": "one"})
