"""The simulation engine: the run config it submits, the federation's size, following the run folder,
and (end to end) a run on Flower's simulation runtime that leaves nothing behind."""

import json
import os
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args
from flwr.supercore.utils import simulation_config_from_json

from nebula.common.config import ConfigError
from nebula.common.presets import preset_config
from nebula.deploy.processes import read_proc
from nebula.server.app import config_from_run_config, format_overrides, parse_overrides, run_config_for
from nebula.simulation.engine import Follower, LocalSimulation, _node_config, federation_config, simulate

FLOWER_AND_RAY = ("flower-superlink", "flower-superexec", "flwr-simulation", "flwr run", "raylet", "gcs_server")


def flower_processes() -> set[tuple[int, int, str]]:
    """Live processes of Flower or Ray: ``(pid, start time, command line)``."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        info = read_proc(int(entry))
        if info is not None and info.state not in ("Z", "X") and any(name in cmdline for name in FLOWER_AND_RAY):
            found.add((info.pid, info.start, cmdline[:160]))
    return found


def test_the_run_config_reads_back_as_the_same_configuration():
    config = preset_config(
        "smoke",
        {
            "federation.output_dir": "/tmp/a folder/it's here",
            "model.student_overrides": "1:minilm-l6",
            "federation.faults": "2:nan",
            "train.lr": 1e-4 / 3,
            "federation.resume": True,
        },
    )
    run_config = run_config_for(config)
    assert set(run_config) == {"preset", "overrides"}
    assert config_from_run_config(run_config) == config
    assert run_config_for(preset_config("quick")) == {"preset": "quick", "overrides": ""}


def test_overrides_format_and_parse_are_inverse():
    pairs = {"data.dataset": "my data.csv", "federation.faults": "2:nan", "x.y": 'say "hi"', "a.b": ""}
    assert parse_overrides(format_overrides(pairs)) == pairs


def test_the_run_config_holds_preset_and_overrides_only():
    with pytest.raises(ConfigError, match=r"\['federation.rounds'\].*overrides"):
        config_from_run_config({"preset": "smoke", "federation.rounds": 1})


def test_the_federation_has_a_node_per_client_and_the_teacher():
    config, nodes, cpus = _node_config(preset_config("smoke", {"train.threads": 0}), workers=1)
    assert nodes == config.data.num_clients + 1  # partition id num_clients is the teacher
    assert cpus == config.train.threads == (os.cpu_count() or 1)
    # As `flwr run --federation-config` parses it (flwr/cli/run/run.py): known fields, the right types.
    text = federation_config(nodes, cpus_per_node=cpus, cores=8, verbose=False)
    parsed = simulation_config_from_json({k.replace("-", "_"): v for k, v in parse_config_args([text]).items()})
    assert (parsed.num_supernodes, parsed.client_resources_num_cpus, parsed.init_args_num_cpus) == (nodes, cpus, 8)
    assert parsed.init_args_log_to_driver is False and parsed.init_args_logging_level == "ERROR"


def test_the_follower_returns_complete_lines_written_after_it_was_made(tmp_path):
    path = tmp_path / "metrics.jsonl"
    waiting = Follower(path)
    assert waiting.lines() == []  # no file yet
    path.write_text("old\n")
    assert waiting.lines() == ["old"]  # the file did not exist when it was made: all of it is new
    follower = Follower(path)
    assert follower.lines() == []
    with path.open("a") as f:
        f.write('{"round": 1}\n{"rou')
    assert follower.lines() == ['{"round": 1}']
    with path.open("a") as f:
        f.write('nd": 2}\n')
    assert follower.lines() == ['{"round": 2}']
    assert Follower(path, from_start=True).lines() == ["old", '{"round": 1}', '{"round": 2}']


def test_submitting_without_the_projects_pyproject_names_it(tmp_path):
    with LocalSimulation(cwd=tmp_path) as link:
        with pytest.raises(RuntimeError, match="pyproject.toml"):
            link.submit({"preset": "smoke"}, "num-supernodes=4", app=tmp_path)
        private = link.dir
        assert private.is_dir()
    assert not private.exists()


@pytest.mark.e2e
def test_a_simulation_runs_on_flowers_runtime_and_leaves_nothing(tmp_path, monkeypatch):
    """One smoke round through a private SuperLink and `flwr run`: a relative output_dir is the caller's,
    on_round sees each round as metrics.jsonl does, and no process, folder or file is left behind."""
    monkeypatch.chdir(tmp_path)
    private: list[Path] = []
    init = LocalSimulation.__init__

    def recording(self, *args, **kwargs):
        init(self, *args, **kwargs)
        private.append(self.dir)

    monkeypatch.setattr(LocalSimulation, "__init__", recording)
    before = flower_processes()
    rounds = []
    config = preset_config("smoke", {"federation.rounds": 1, "federation.output_dir": "run"})
    history = simulate(config, on_round=rounds.append)
    assert [h["round"] for h in history] == [1] and rounds == history
    assert history[0]["accepted"] == 3 and history[0]["teacher_ok"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in row.items() if k != "run_id"} for row in rows] == history
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing else in the working directory
    assert len(private) == 1 and not private[0].exists()  # FLWR_HOME and RAY_TMPDIR were in it
    assert flower_processes() - before == set()
