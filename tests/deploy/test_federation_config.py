"""What a deployment hands Flower: run config overrides, node config text, the nodes of a federation."""

import pytest

from nebula.common.config import ConfigError
from nebula.deploy.local import DeployError, NodeSpec, federation_nodes
from nebula.server.app import config_from_run_config, parse_overrides


def test_overrides_string_over_the_preset():
    cfg = config_from_run_config(
        {"preset": "smoke", "overrides": "federation.rounds=1 data.num_clients=2 federation.reply_timeout=30.5"}
    )
    assert (cfg.federation.rounds, cfg.data.num_clients, cfg.federation.reply_timeout) == (1, 2, 30.5)
    assert cfg.data.public_size == 48  # the rest is the smoke preset's
    assert config_from_run_config({"preset": "smoke", "overrides": ""}).federation.rounds == 2


def test_overrides_quoting_and_errors():
    assert parse_overrides("data.dataset='my data.csv' x.y=1") == {"data.dataset": "my data.csv", "x.y": "1"}
    with pytest.raises(ConfigError, match="not section.field=value"):
        parse_overrides("federation.rounds")
    with pytest.raises(ConfigError, match="unknown configuration key 'federation.nope'"):
        config_from_run_config({"preset": "smoke", "overrides": "federation.nope=1"})
    with pytest.raises(ConfigError, match="overrides"):
        parse_overrides("data.dataset='open")


def test_node_config_text_reaches_node_identity(tmp_path):
    from flwr.app import Context, RecordDict
    from flwr.common.config import parse_config_args

    from nebula.client.node import identify

    teacher, c0, c1 = federation_nodes("teacher0", ["jetson-07", "phone-2"])
    assert (teacher.partition, c0.partition, c1.partition) == (2, 0, 1)
    for spec, role, index in ((teacher, "teacher", -1), (c1, "client", 1)):
        node_config = parse_config_args([spec.node_config(tmp_path / spec.name)])  # as flower-supernode parses it
        context = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})
        node = identify(context, teacher_index=2)
        assert (node.role, node.index, node.client_id) == (role, index, spec.name)
        assert node_config["output-dir"] == str(tmp_path / spec.name)


def test_a_node_with_a_worker_names_its_socket(tmp_path):
    from flwr.app import Context, RecordDict
    from flwr.common.config import parse_config_args

    from nebula.client.worker_link import worker_socket

    nodes = federation_nodes("teacher0", ["c0"], workers=True)
    assert all(n.worker for n in nodes)
    node_config = parse_config_args([nodes[1].node_config(tmp_path / "c0")])
    context = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})
    assert worker_socket(context) == str(tmp_path / "c0" / "worker.sock")
    plain = parse_config_args([federation_nodes("t", ["c0"])[1].node_config(tmp_path / "c0")])
    assert worker_socket(Context(run_id=1, node_id=7, node_config=plain, state=RecordDict(), run_config={})) is None


def test_node_config_refuses_quotes():
    with pytest.raises(DeployError, match="quotes"):
        NodeSpec("n0").node_config("/tmp/it's")


def test_round_timing_puts_the_slowest_client_and_the_teacher_on_the_critical_path():
    from nebula.deploy.local import round_timing

    row = {
        "seconds": 60.0,
        "clients_wait_seconds": 25.0,
        "teacher_wait_seconds": 30.0,
        "teacher_seconds": 20.0,
        "clients": {"a": {"seconds": 8.0}, "b": {"seconds": 12.0}},
    }
    t = round_timing(row)
    assert (t["compute"], t["ratio"], t["clients_compute"]) == (32.0, 60.0 / 32.0, 12.0)
    assert round_timing({"seconds": 5.0, "clients": {}})["ratio"] == float("inf")


def test_deploy_cli_names_what_is_missing(tmp_path, capsys):
    from nebula.cli.main import main

    assert main(["deploy", "up", str(tmp_path / "run"), "--certs", str(tmp_path / "none"), "--clients", "c0"]) == 2
    err = capsys.readouterr().err
    assert "ca.pem" in err and "supernodes/c0.key" in err and "nebula certs" in err
    assert not (tmp_path / "run").exists()  # nothing started, nothing written
    assert main(["deploy", "down", str(tmp_path)]) == 2
    assert "pids.json" in capsys.readouterr().err
