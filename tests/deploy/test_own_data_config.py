"""A client's own data in a deployment's node config: NodeSpec, federation_nodes and `nebula deploy up --data`."""

import pytest

from nebula.cli.deploy import _client_data
from nebula.client.node import DataSource, data_source
from nebula.common import keys
from nebula.deploy.local import DeployError, NodeSpec, federation_nodes


def _parsed(node_config: str) -> dict:
    from flwr.common.config import parse_config_args

    return parse_config_args([node_config])


def test_the_node_config_names_the_data_as_the_client_reads_it(tmp_path):
    spec = NodeSpec("client0", partition=0, num_partitions=2, data_path=tmp_path / "mine.csv", text_field="body")
    cfg = _parsed(spec.node_config(tmp_path / "node"))
    assert cfg[keys.NODE_DATA_PATH] == str((tmp_path / "mine.csv").resolve())
    assert data_source(cfg) == DataSource(str((tmp_path / "mine.csv").resolve()), "body", "")
    assert keys.NODE_DATA_PATH not in _parsed(NodeSpec("client1").node_config(tmp_path / "node"))


def test_a_relative_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _parsed(NodeSpec("client0", data_path="d/mine.csv").node_config(tmp_path / "node"))
    assert cfg[keys.NODE_DATA_PATH] == str(tmp_path.resolve() / "d" / "mine.csv")


def test_each_path_goes_to_its_own_node_only(tmp_path):
    nodes = federation_nodes("teacher0", ["client0", "client1", "client2"], data={"client1": tmp_path / "c1.csv"})
    by_name = {n.name: n for n in nodes}
    assert by_name["client1"].data_path == tmp_path / "c1.csv"
    assert [n.name for n in nodes if n.data_path is not None] == ["client1"]
    with pytest.raises(DeployError, match="data given for teacher0, not client nodes"):
        federation_nodes("teacher0", ["client0"], data={"teacher0": tmp_path / "x.csv"})
    with pytest.raises(DeployError, match="only a client node trains on its own data"):
        NodeSpec("teacher0", keys.ROLE_TEACHER, data_path=tmp_path).node_config(tmp_path)
    with pytest.raises(DeployError, match="may not hold quotes"):
        NodeSpec("client0", data_path=tmp_path / "it's.csv").node_config(tmp_path)


def test_deploy_up_data_option(tmp_path):
    (tmp_path / "a.csv").write_text("text,label\n")
    (tmp_path / "folder").mkdir()
    got = _client_data([f"client0={tmp_path / 'a.csv'}", f"client1={tmp_path / 'folder'}"], ["client0", "client1"])
    assert got == {"client0": (tmp_path / "a.csv").resolve(), "client1": (tmp_path / "folder").resolve()}
    for items, message in [
        (["client0"], "expected NAME=PATH"),
        ([f"teacher0={tmp_path}"], "'teacher0' is not a client node"),
        ([f"client0={tmp_path / 'absent.csv'}"], "absent.csv not found"),
        ([f"client0={tmp_path}", f"client0={tmp_path}"], "names 'client0' twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            _client_data(items, ["client0", "client1"])
