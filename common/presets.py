"""Named presets: flat config overrides over the defaults of nebula.common.config."""

from __future__ import annotations

from typing import Any

from nebula.common.config import ConfigError, NebulaConfig

PRESETS: dict[str, dict[str, Any]] = {
    # The README's first command: minutes on 2 cores.
    "quick": {},
    # The benchmark federation: 10 clients, Dirichlet 0.3, more rounds and data.
    "benchmark": {
        "data.num_clients": 10,
        "data.dirichlet_alpha": 0.3,
        "data.test_size": 1000,
        "data.public_size": 2000,
        "data.private_size": 3000,
        "federation.rounds": 10,  # the global student plateaus from about round 8 (README, Benchmark)
        "federation.public_per_round": 400,
        "federation.min_replies": 5,
        "train.eval_every": 3,
    },
    # The end-to-end test: 3 clients x 2 rounds, tiny data, few steps.
    "smoke": {
        "data.num_clients": 3,
        "data.test_size": 40,
        "data.public_size": 48,
        "data.private_size": 90,
        "data.max_length": 32,
        "federation.rounds": 2,
        "federation.public_per_round": 24,
        "train.teacher_epochs": 1,
        "train.student_epochs": 1,
    },
}


def preset_config(name: str, overrides: dict[str, Any] | None = None) -> NebulaConfig:
    """Defaults, then the preset, then ``overrides`` (all flat ``section.field`` keys)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return NebulaConfig.from_flat({**PRESETS[name], **(overrides or {})})
