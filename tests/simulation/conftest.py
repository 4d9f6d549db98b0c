"""The finished smoke federation that the simulation tests read (run once per session)."""

import pytest

from nebula.common.presets import preset_config
from nebula.simulation.engine import simulate


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """3 clients x 2 rounds; client 1 on MiniLM-L6, client 2 sends NaN logits (see test_end_to_end.py)."""
    out = tmp_path_factory.mktemp("run")
    config = preset_config(
        "smoke",
        {
            "federation.output_dir": str(out),
            "model.student_overrides": "1:minilm-l6",
            "federation.faults": "2:nan",
        },
    )
    history = simulate(config)
    return config, out, history
