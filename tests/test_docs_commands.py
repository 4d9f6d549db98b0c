"""The guides' cheap commands run as written, from a folder like a fresh clone (relative paths included).

The command blocks of README.md and deploy/README.md are read here, not copied: the `nebula certs`,
`nebula deploy up`, `nebula export` and `nebula predict` lines (a trailing backslash continues a line) run in
order in a temporary folder, `.venv/bin/nebula` being this environment's `nebula`. Export needs a finished run in
`runs/latest`, which a smoke federation makes first (the README's own simulate commands take minutes: they are
checked by hand, see docs/benchmarks.md). The long commands (`make simulate`, `nebula benchmark`) are not run here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NEBULA = str(Path(sys.executable).parent / "nebula")
CHEAP = ("certs", "deploy up", "export", "predict")


def _commands(markdown: Path) -> list[str]:
    """The `.venv/bin/nebula ...` lines of the ```bash blocks, continuation lines joined, comments dropped."""
    out, block = [], re.findall(r"```bash\n(.*?)```", markdown.read_text(encoding="utf-8"), flags=re.S)
    for text in block:
        joined = re.sub(r"\\\n\s*", " ", text)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(".venv/bin/nebula "):
                out.append(line)
    return out


def _cheap(commands: list[str]) -> list[str]:
    return [c for c in commands if any(c.removeprefix(".venv/bin/nebula ").startswith(k) for k in CHEAP)]


def _run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_readmes_name_the_cheap_commands():
    readme, deploy = _cheap(_commands(ROOT / "README.md")), _cheap(_commands(ROOT / "deploy" / "README.md"))
    for kind in CHEAP:
        assert any(c.removeprefix(".venv/bin/nebula ").startswith(kind) for c in readme + deploy), kind


@pytest.mark.e2e
def test_the_cheap_commands_run_as_written(tmp_path):
    smoke = [NEBULA, "simulate", "--preset", "smoke", "--baselines", "none", "--rounds", "1"]
    made = _run([*smoke, "--output-dir", "runs/latest"], tmp_path, timeout=900)
    assert made.returncode == 0, made.stderr[-2000:]
    seen = set()
    for source in (ROOT / "README.md", ROOT / "deploy" / "README.md"):
        for command in _cheap(_commands(source)):
            # --data names a user's own files; absolute paths and the quick preset belong to measurement recipes
            if command in seen or "--data " in command or " /" in command or "--preset quick" in command:
                continue
            seen.add(command)
            argv = [NEBULA, *shlex.split(command.removeprefix(".venv/bin/nebula "))]
            if argv[1] == "certs" and (tmp_path / "runs" / "pki" / "ca.pem").exists():
                argv.append("--force")  # both guides make the same material
            done = _run(argv, tmp_path, timeout=900)
            assert done.returncode == 0, f"{source.name}: {command}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
    assert {c.split()[1] for c in seen} >= {"certs", "deploy", "export", "predict"}
