"""End to end on Flower's deployment engine, on loopback: each device trains on its own data.

A SuperLink with TLS and SuperNode authentication, a registered teacher and two registered client nodes
running the smoke preset for one round. Each client brings its own CSV of 40 tweets (different label
mixes, disjoint texts), written by the test into a folder of its own; the public pool and the global
test set stay the shared ``tweets`` dataset.

How no node can read another's file: each file's path is given only to its own node, in that node's
``--node-config`` (``data-path``, from ``start_federation(data={name: path})``); the teacher's node
config names no data, the server never sees a path (only each client's label counts and example count
come back, in its describe reply), and the client code reads nothing but the path its own node config
names (client/edge.py). The test checks each SuperNode's command line: client0's names only
client0's file, client1's only client1's, the teacher's none.
"""

import csv
import json

import numpy as np
import pytest

from nebula.common import keys
from nebula.common.data import load_dataset
from nebula.common.federation_data import device_data
from nebula.common.presets import preset_config
from nebula.server.ledger import Ledger

pytestmark = pytest.mark.e2e

MIXES = {"client0": (30, 0, 10), "client1": (5, 20, 15)}  # (negative, neutral, positive) rows of each file


def _write_files(root) -> dict[str, object]:
    """One CSV per client in its own folder, from disjoint tweets; {client name: path}."""
    tweets = load_dataset("tweets")
    by_class = [np.flatnonzero(tweets.labels == c)[::-1] for c in range(len(tweets.label_names))]  # from the end
    used = [0] * len(by_class)
    paths = {}
    for name, mix in MIXES.items():
        rows = []
        for label, count in enumerate(mix):
            taken = by_class[label][used[label] : used[label] + count]
            used[label] += count
            rows += [(tweets.texts[i], tweets.label_names[label]) for i in taken]
        folder = root / f"device-{name}"
        folder.mkdir()
        with open(folder / "mine.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
        paths[name] = folder / "mine.csv"
    return paths


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, smoke_federation):
    root = tmp_path_factory.mktemp("own-data")
    paths = _write_files(root)
    fed, run_id = smoke_federation(
        root, data=paths, overrides={"federation.rounds": 1, "federation.reply_timeout": 300}
    )
    try:
        argv = {p.name: list(p.popen.args) for p in fed.processes if p.popen is not None}
        status = fed.wait_run(run_id, timeout=900)
    finally:
        survivors = fed.stop()
    return {"fed": fed, "paths": paths, "status": status, "argv": argv, "survivors": survivors}


def _node_config(argv: list[str]) -> str:
    return argv[argv.index("--node-config") + 1]


def test_run_completes_with_both_clients(deployment):
    assert deployment["status"]["status"] == "finished:completed", deployment["status"]
    assert deployment["survivors"] == []
    rows = [json.loads(line) for line in deployment["fed"].run_folder.metrics.read_text().splitlines()]
    assert [r["round"] for r in rows] == [1]
    assert rows[0]["accepted"] == 2 and set(rows[0]["clients"]) == {"client0", "client1"}
    for metrics in rows[0]["clients"].values():
        assert "acc_own" in metrics  # scored on the holdout of the device's own file


def test_the_ledger_holds_each_clients_own_label_counts(deployment):
    fed, paths = deployment["fed"], deployment["paths"]
    config = preset_config("smoke")
    run_id = json.loads(fed.run_folder.metrics.read_text().splitlines()[0])["run_id"]
    ledger = Ledger(fed.run_folder.ledger)
    try:
        recorded = ledger.label_counts(run_id)
    finally:
        ledger.close()
    assert set(recorded) == {"client0", "client1"}
    for name, path in paths.items():
        own = device_data(
            path,
            label_names=("negative", "neutral", "positive"),
            text_field="text",
            label_field="label",
            holdout_fraction=config.data.holdout_fraction,
            seed=config.data.seed,
        )
        # What the client trains on: its file less its holdout (round(40 * 0.2) = 8 rows).
        assert recorded[name] == own.support().tolist()
        assert sum(recorded[name]) == 32
        file_counts = np.asarray(recorded[name]) + np.bincount(own.labels(own.split.holdout), minlength=3)
        assert file_counts.tolist() == list(MIXES[name])  # the file's own label mix, nothing of the shared data


def test_each_node_config_names_only_its_own_file(deployment):
    argv, paths = deployment["argv"], deployment["paths"]
    for name, path in paths.items():
        cfg = _node_config(argv[name])
        assert f"{keys.NODE_DATA_PATH}='{path.resolve()}'" in cfg
        others = [str(p.resolve()) for n, p in paths.items() if n != name]
        assert not any(o in cfg for o in others)
    assert keys.NODE_DATA_PATH not in _node_config(argv["teacher0"])
    # No other process (SuperLink, teacher) was given any client's path.
    for proc, args in argv.items():
        if proc not in paths:
            assert not any(str(p.resolve()) in " ".join(args) for p in paths.values()), proc
