"""``flwr run .`` on a local simulation SuperLink runs the smoke preset: the commands a user types, as documented.

1. a private FLWR_HOME whose config.toml names the SuperLink (Flower 1.41 keeps connections there, not in
   pyproject.toml: a ``[tool.flwr.federations]`` table would be moved out and commented out by ``flwr run``);
2. ``flower-superlink --insecure --simulation --disable-runtime-dependency-installation`` on loopback;
3. ``flwr run . --federation-config "num-supernodes=4" --run-config 'preset="smoke" overrides="..."' --stream``
   from the project's folder: 3 clients and the teacher (the last virtual node);
4. ``kill`` of the SuperLink, which takes Flower's helpers with it.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from nebula.deploy.local import PROJECT_ROOT, free_port
from nebula.deploy.processes import family, is_running, spawn, stop

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


def _env(flwr_home: Path, ray_tmp: Path) -> dict[str, str]:
    return dict(
        os.environ,
        FLWR_HOME=str(flwr_home),
        RAY_TMPDIR=str(ray_tmp),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_DISABLE_UPDATE_CHECK="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the SuperLink starts flower-superexec by name
    )


def _wait_healthy(port: int, superlink, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert superlink.alive(), Path(superlink.log).read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"the SuperLink did not answer within {timeout:.0f} s")


def test_flwr_run_on_a_local_simulation_runs_the_smoke_preset(tmp_path):
    flwr_home, out = tmp_path / "flwr", tmp_path / "run"
    ray_tmp = Path(tempfile.mkdtemp(prefix="nbl-"))  # Ray's socket paths must stay short
    env, port = _env(flwr_home, ray_tmp), free_port()
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "nebula-local"\n\n'
        f'[superlink.nebula-local]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    argv = [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--disable-runtime-dependency-installation"]
    superlink = spawn(
        "superlink",
        [*argv, "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        log_path=tmp_path / "superlink.log",
        cwd=tmp_path,
    )
    try:
        _wait_healthy(port, superlink)
        run = subprocess.run(
            [str(BIN / "flwr"), "run", ".", "--federation-config", "num-supernodes=4"]
            + ["--run-config", f'preset="smoke" overrides="federation.output_dir={out}"', "--stream"],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        listed = subprocess.run(
            [str(BIN / "flwr"), "list", "--format", "json"], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        runs = json.loads(listed.stdout[listed.stdout.index("{") :])["runs"]
        assert [r["status"] for r in runs] == ["finished:completed"], run.stdout[-3000:]
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [row["round"] for row in rows] == [1, 2]
        assert all(row["accepted"] == 3 and row["teacher_ok"] for row in rows)  # the 4th node was the teacher
        assert "MIGRATION NOTICE" not in (PROJECT_ROOT / "pyproject.toml").read_text()  # flwr run left it alone

        helpers = family([superlink])  # the SuperLink, flower-superexec and whatever they still run
        assert len(helpers) >= 2
        os.kill(superlink.pid, signal.SIGTERM)  # what the user does: kill the SuperLink only
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(is_running(p.pid, p.start) for p in helpers):
            superlink.alive()  # reaps it
            time.sleep(0.3)
        assert not [p for p in helpers if is_running(p.pid, p.start)], "Flower's helpers outlived the SuperLink"
    finally:
        stop([superlink])
        shutil.rmtree(ray_tmp, ignore_errors=True)
