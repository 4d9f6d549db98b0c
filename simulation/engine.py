"""Run the federation on Flower's simulation runtime, as ``flwr run`` does.

Flower 1.41 supports one way to run a simulation: a SuperLink with the simulation runtime
(``flower-superlink --simulation``) runs each submitted app in a ``flwr-simulation`` process, which
imports the ServerApp and ClientApp by name (pyproject.toml, ``[tool.flwr.app.components]``) and
hands the ServerApp the run config (``preset``, ``overrides``: server/app.py). The in-process call,
``flwr.simulation.run_simulation``, is deprecated. :func:`simulate` does what a user does by hand
with ``flwr run .``:

1. starts a SuperLink of its own on a free loopback port (:class:`LocalSimulation`), with Flower's
   and Ray's state in a temporary folder (``FLWR_HOME``, ``RAY_TMPDIR``) and no dependency
   installation: the apps run from the installed nebula-fd, in this environment;
2. submits the project with ``flwr run``, the configuration as run config (:func:`run_config_for`)
   and the federation's size as ``--federation-config``: ``data.num_clients + 1`` virtual nodes,
   the last one (partition id ``data.num_clients``) the teacher;
3. reads each round's summary from the run folder's metrics.jsonl as the server appends it
   (``on_round``), and Flower's log of the run as it streams (shown with ``verbose``);
4. stops every process it started and removes the temporary folder, whatever happened (an
   exception, Ctrl-C, or SIGTERM, which ends the call like Ctrl-C while it runs).

The processes run in the caller's working directory, so relative paths in the configuration
mean what they mean to the caller.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from nebula.common.config import ConfigError, NebulaConfig
from nebula.common.run_folder import RunFolder
from nebula.deploy.local import PROJECT_ROOT, free_port
from nebula.deploy.processes import Started, spawn, stop
from nebula.server.app import run_config_for

log = logging.getLogger(__name__)

CONNECTION = "nebula-local"  # the SuperLink connection in the private FLWR_HOME/config.toml
COMPLETED = "finished:completed"
POLL_SECONDS = 0.5


def federation_config(nodes: int, *, cpus_per_node: int, cores: int, verbose: bool) -> str:
    """``flwr run --federation-config``: ``nodes`` virtual SuperNodes, Ray's CPUs, and Ray's logs
    only with ``verbose``."""
    return (
        f"num-supernodes={nodes} client-resources-num-cpus={cpus_per_node} init-args-num-cpus={cores} "
        f"init-args-logging-level='ERROR' init-args-log-to-driver={'true' if verbose else 'false'}"
    )


class Follower:
    """The complete lines a file gains after the follower was made (another process appends to it);
    ``from_start``: all of them."""

    def __init__(self, path: Path, *, from_start: bool = False) -> None:
        self.path = Path(path)
        self.offset = self.path.stat().st_size if self.path.exists() and not from_start else 0
        self.partial = b""

    def lines(self) -> list[str]:
        """The lines completed since the last call (a line still being written waits for its newline)."""
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        *complete, self.partial = (self.partial + data).split(b"\n")
        return [line.decode("utf-8", "replace") for line in complete]


class LocalSimulation:
    """A private SuperLink with the simulation runtime, and the ``flwr`` calls that use it.

    A context manager: on exit it stops every process it started (SuperLink, Flower's helpers,
    ``flwr run``) and removes its folder. Flower's and Ray's state stay in that folder.
    """

    def __init__(self, cwd: Path | None = None) -> None:
        # Ray's socket paths must stay short (< 108 bytes), hence /tmp and a short prefix.
        self.dir = Path(tempfile.mkdtemp(prefix="nbl-"))
        self.cwd = Path(cwd) if cwd is not None else Path.cwd()
        self.bin = Path(sys.executable).parent
        self.processes: list[Started] = []
        self.port = 0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            FLWR_HOME=str(self.dir / "flwr"),
            RAY_TMPDIR=str(self.dir),
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            FLWR_DISABLE_UPDATE_CHECK="1",
            RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",  # else Ray's FutureWarning on every start
            RAY_DEDUP_LOGS="0",
            TOKENIZERS_PARALLELISM="false",
            PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",  # Flower starts its helpers by name
        )
        return env

    def start(self, *, timeout: float = 60.0) -> None:
        """Start the SuperLink and wait until ``GET /health`` answers; write the connection."""
        self.port = free_port()
        argv = [str(self.bin / "flower-superlink"), "--insecure", "--simulation"]
        argv += ["--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(self.port)]
        superlink = self._spawn("superlink", argv)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not superlink.alive():
                raise RuntimeError(f"the SuperLink exited (code {superlink.returncode()}): {tail(superlink.log)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        else:
            raise RuntimeError(f"the SuperLink did not answer within {timeout:.0f} s: {tail(superlink.log)}")
        (self.dir / "flwr").mkdir(exist_ok=True)
        (self.dir / "flwr" / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )

    def submit(self, run_config: dict[str, str], federation: str, *, app: Path = PROJECT_ROOT) -> Started:
        """``flwr run APP CONNECTION --stream``: the process, which ends when the run has ended."""
        if not (Path(app) / "pyproject.toml").is_file():
            raise RuntimeError(
                f"no pyproject.toml in {app}: the simulation submits the Flower app of nebula's source tree; "
                "install nebula from it (pip install -e .)"
            )
        config_file = self.dir / "run-config.toml"
        config_file.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in run_config.items()))
        argv = [str(self.bin / "flwr"), "run", str(app), CONNECTION, "--run-config", str(config_file)]
        return self._spawn("flwr-run", [*argv, "--federation-config", federation, "--stream"])

    def run_status(self) -> dict:
        """Flower's record of the run (``status``, ``status-details``); the SuperLink holds only this one."""
        done = subprocess.run(
            [str(self.bin / "flwr"), "list", CONNECTION, "--format", "json"],
            env=self.env(),
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        try:
            runs = json.loads(done.stdout[done.stdout.index("{") :])["runs"]
        except (ValueError, KeyError):
            return {"status": "unknown", "status-details": f"`flwr list` answered {done.stdout[-400:]!r}"}
        return runs[0] if runs else {"status": "unknown", "status-details": "the SuperLink holds no run"}

    def _spawn(self, name: str, argv: list[str]) -> Started:
        started = spawn(name, argv, env=self.env(), log_path=self.dir / f"{name}.log", cwd=self.cwd)
        self.processes.append(started)
        return started

    def __enter__(self) -> LocalSimulation:
        return self

    def __exit__(self, *exc) -> None:
        try:
            # Nothing of a simulation's processes needs a long grace: the ledger commits whole rounds, and an
            # interrupted user is waiting (tests/simulation/test_interrupt.py).
            left = stop(self.processes, grace=5.0)
            if left:
                log.warning("still running after SIGKILL: %s", ", ".join(str(p.pid) for p in left))
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def tail(path: str | Path, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _node_config(config: NebulaConfig, workers: int | None) -> tuple[NebulaConfig, int, int]:
    """``(config, nodes, cpus per node)``: ``workers`` parallel nodes; train.threads shares the cores among them."""
    cores = os.cpu_count() or 1
    nodes = config.data.num_clients + 1
    workers = max(1, min(workers or cores, nodes, cores))
    if config.train.threads == 0:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, threads=max(1, cores // workers)))
    return config, nodes, max(1, cores // workers)


def simulate(
    config: NebulaConfig,
    *,
    on_round: Callable[[dict], None] | None = None,
    workers: int | None = None,
    verbose: bool = False,
) -> list[dict]:
    """Run the federation and return the per-round summaries.

    Parameters
    ----------
    on_round : callable, optional
        Called with each round's summary (a row of the run folder's metrics.jsonl) as the server writes it.
    workers : int, optional
        Parallel Ray actors (default: one per CPU core, at most the number of nodes).
        Each gets ``cores / workers`` torch threads unless ``train.threads`` is set.
    verbose : bool
        Print Flower's log of the run as it comes, the workers' own logs among it. Off by default:
        a client's failure still reaches the server as an error reply with its reason, and the
        log's end is shown if the run fails.
    """
    if config.federation.shard_count() is not None:
        raise ConfigError(
            f"federation.isolation {config.federation.isolation!r}: a sharded run is S federations; "
            "run it with nebula.simulation.sharded.run_sharded (what `nebula simulate` does)"
        )
    config, nodes, cpus = _node_config(config, workers)
    out = Path(config.federation.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = Follower(RunFolder(out).metrics)  # rows appended from now on are this run's
    started = time.perf_counter()
    with _exit_on_sigterm(), LocalSimulation() as link:
        link.start()
        federation = federation_config(nodes, cpus_per_node=cpus, cores=os.cpu_count() or 1, verbose=verbose)
        run = link.submit(run_config_for(config), federation)
        history = _follow(run, metrics, on_round=on_round, verbose=verbose)
        status = link.run_status()
        if status.get("status") != COMPLETED or not _finished(config, history):
            log.error("Flower's log of the run, its end:\n%s", tail(run.log))
            raise RuntimeError(
                f"the simulation ended ({status.get('status')}: {status.get('status-details', '')}) after "
                f"{len(history)} of {config.federation.rounds} round(s)"
            )
    log.info("simulation finished in %.1f s", time.perf_counter() - started)
    return history


@contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """While the simulation runs, SIGTERM ends the caller like Ctrl-C does (SystemExit, exit code 143), so the
    processes it started are stopped on the way out; the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return

    def _exit(signum: int, frame) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _follow(run: Started, metrics: Follower, *, on_round: Callable[[dict], None] | None, verbose: bool) -> list[dict]:
    """Until ``run`` (``flwr run --stream``) ends: each new metrics row to ``on_round``, Flower's log to
    stdout with ``verbose``; the rows."""
    history: list[dict] = []
    flower_log = Follower(Path(run.log), from_start=True)
    while True:
        running = run.alive()  # read before the files: nothing written before the run ended is missed
        for line in filter(None, metrics.lines()):
            row = json.loads(line)
            row.pop("run_id", None)  # a summary as the server made it
            history.append(row)
            if on_round is not None:
                on_round(row)
        for line in flower_log.lines() if verbose else ():
            print(line, flush=True)
        if not running:
            return history
        time.sleep(POLL_SECONDS)


def _finished(config: NebulaConfig, history: list[dict]) -> bool:
    """Whether the run reached its last round: all of them, or (resumed) the last one unless none was left."""
    if config.federation.resume:
        return not history or history[-1]["round"] == config.federation.rounds
    return len(history) == config.federation.rounds
