"""A whole Nebula federation on one host, over Flower's deployment engine, as an operator runs one.

:class:`LocalFederation` starts, on loopback, a SuperLink with TLS, SuperNode authentication, a
state database and runtime package installation off; optionally the fleet gate in front of it
(:mod:`nebula.deploy.fleet_gate`, on another loopback port: the SuperNodes connect to the gate,
which forwards the Fleet API only, while this class's own ``flwr`` calls go to the SuperLink);
registers each SuperNode's public key under its name; starts the teacher and client SuperNodes
with their node config; submits the run with ``flwr run``; polls until it ends; and stops every
process it started, by process id (:mod:`nebula.deploy.processes`), also when anything fails.
``nebula deploy up`` / ``down`` drive it (``up`` starts the gate unless ``--no-gate``).

Everything a run writes stays in its folder ``RUN_DIR``:

=====================  =======================================================================
``flwr/``              FLWR_HOME: ``config.toml`` (the ``nebula`` connection, with the CA),
                       installed app bundles; nothing is written to the home folder
``state.db``           the SuperLink's database (registered SuperNodes, runs)
``logs/NAME.log``      each process's output (``fleet-gate.log``: the gate's, with every refused
                       request); ``logs/run-ID.log`` is ``flwr log`` of the run
``server/``            the ServerApp's output: ``ledger.sqlite``, ``metrics.jsonl``, checkpoints
``nodes/NAME/``        what each node saves (its adapters; the teacher's models)
                       (a client's own data stays where it is: its node config names its path)
``pids.json``          the processes started, for ``nebula deploy down``
``run-ID.json``        Flower's record of a finished run (status, timestamps, traffic)
=====================  =======================================================================

Flower 1.41 facts this relies on (checked here):
``--run-config`` keys must be declared in pyproject.toml, hence the single ``overrides`` string
(server/app.py); each SuperNode on one host needs its own ``--port`` (its ClientApp I/O API);
an unregistered key makes a SuperNode log "Exit Code: 305 ... Failed to activate SuperNode" and exit
with status 1; a SuperNode that stops sending heartbeats (every 30 s) is reported "Node Unavailable" to
the ServerApp after 2 missed intervals. A SuperNode killed without saying goodbye stays online on the
SuperLink until then (up to 60 s), and the same key started again meanwhile is refused the same way
(:meth:`LocalFederation.restart_node` waits); its SuperNode id is the one registered, so the server
knows it again. A message whose reply the ServerApp pulled, the SuperLink's "Node Unavailable"
included, is deleted; one it stopped waiting for at its reply timeout stays (Flower's TTL is 12 h), and
the node, started again, computes it before the messages of the current round.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nebula.common import keys
from nebula.common.run_folder import RunFolder
from nebula.deploy.pki import DeploymentMaterial
from nebula.deploy.processes import ProcInfo, Started, family, read_pid_file, send_signal, spawn, stop, write_pid_file
from nebula.server.identity import write_registry

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the Flower app: pyproject.toml + sources
CONNECTION = "nebula"
DONE = "finished"  # Flower run statuses: pending, starting, running, finished:{completed,failed,stopped}


class DeployError(RuntimeError):
    """A deployment step failed; the message names the step and where its log is."""


@dataclass(frozen=True)
class NodeSpec:
    """One SuperNode: its registered name, role and data partition.

    ``key`` is its private authentication key (default: ``supernodes/NAME.key`` of the material);
    ``registered=False`` starts it without registering its public key (the SuperLink refuses it);
    ``worker=True`` starts a long-lived local worker beside it (:mod:`nebula.client.worker`) and names its
    socket in the node config, so its messages are computed without a process start each.
    ``data_path`` (a client's own CSV / JSON-lines file or folder, made absolute) and its ``text_field`` /
    ``label_field`` go into its node config as ``data-path``, ``text-field``, ``label-field``: the client
    trains on that file instead of its partition of the shared dataset (client/node.py). Only this node's
    config names it.
    """

    name: str
    role: str = keys.ROLE_CLIENT
    partition: int = 0
    num_partitions: int = 1
    key: Path | None = None
    registered: bool = True
    worker: bool = False
    data_path: str | Path | None = None
    text_field: str = ""
    label_field: str = ""

    def node_config(self, output_dir: Path) -> str:
        """``--node-config`` text: what client/node.py reads (strings quoted, as Flower wants)."""
        values = {keys.NODE_ROLE: self.role, keys.NODE_CLIENT_ID: self.name, keys.NODE_OUTPUT_DIR: str(output_dir)}
        if self.worker:
            values[keys.NODE_WORKER_SOCKET] = str(worker_socket_path(output_dir))
        if self.data_path is not None:
            if self.role != keys.ROLE_CLIENT:
                raise DeployError(f"node {self.name}: only a client node trains on its own data, this is a {self.role}")
            values[keys.NODE_DATA_PATH] = str(Path(self.data_path).expanduser().resolve())
            for key, field in ((keys.NODE_TEXT_FIELD, self.text_field), (keys.NODE_LABEL_FIELD, self.label_field)):
                if field:
                    values[key] = field
        elif self.text_field or self.label_field:
            raise DeployError(f"node {self.name}: text_field / label_field need a data_path")
        bad = [f"{k}={v!r}" for k, v in values.items() if "'" in v or "=" in v]
        if bad:
            raise DeployError(f"node {self.name}: node config values may not hold quotes or '=': {', '.join(bad)}")
        quoted = " ".join(f"{k}='{v}'" for k, v in values.items())
        return f"{keys.NODE_PARTITION}={self.partition} {keys.NODE_NUM_PARTITIONS}={self.num_partitions} {quoted}"


def worker_socket_path(node_dir: Path) -> Path:
    return Path(node_dir) / "worker.sock"


def federation_nodes(
    teacher: str,
    clients: Sequence[str],
    *,
    workers: bool = False,
    data: Mapping[str, str | Path] | None = None,
    text_field: str = "",
    label_field: str = "",
) -> list[NodeSpec]:
    """The teacher (partition ``len(clients)``, as the server expects) and clients 0..n-1.

    ``data`` maps a client's name to its own data file or folder (the others train on their partition of
    the shared dataset); ``text_field`` / ``label_field`` name its columns (default: the run's data fields).
    """
    data = dict(data or {})
    unknown = sorted(set(data) - set(clients))
    if unknown:
        raise DeployError(f"data given for {', '.join(unknown)}, not client nodes (clients: {', '.join(clients)})")
    n = len(clients)
    return [NodeSpec(teacher, keys.ROLE_TEACHER, n, n, worker=workers)] + [
        NodeSpec(
            c,
            keys.ROLE_CLIENT,
            i,
            n,
            worker=workers,
            data_path=data.get(c),
            text_field=text_field if c in data else "",
            label_field=label_field if c in data else "",
        )
        for i, c in enumerate(clients)
    ]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalFederation:
    """SuperLink, SuperNodes and runs of one folder; a context manager that stops them all on exit."""

    def __init__(
        self,
        run_dir: str | Path,
        material: DeploymentMaterial,
        *,
        app_dir: Path = PROJECT_ROOT,
        host: str = "127.0.0.1",
        bin_dir: Path | None = None,
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.material, self.app_dir, self.host = material, Path(app_dir), host
        self.bin_dir = Path(bin_dir) if bin_dir else Path(sys.executable).parent
        self.processes: list[Started] = []
        self.node_ids: dict[str, int] = {}  # registered name -> SuperNode id
        self.specs: dict[str, NodeSpec] = {}  # name -> how its SuperNode was started (restart_node starts it again)
        self.registered: dict[str, tuple[str, str, bytes]] = {}  # name -> (role, client id, public key)
        self.superlink: Started | None = None
        self.port = 0
        self.gate: Started | None = None  # the fleet gate, when started: the SuperNodes' address
        self.gate_port = 0
        for sub in ("flwr", "logs", "server", "nodes", "tmp"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)

    # -- paths and environment -------------------------------------------------------------
    @property
    def address(self) -> str:
        """The SuperLink's address (all its APIs): where this class's ``flwr`` calls go."""
        return f"{self.host}:{self.port}"

    @property
    def gate_address(self) -> str:
        """The fleet gate's address (the Fleet API only)."""
        return f"{self.host}:{self.gate_port}"

    @property
    def fleet_address(self) -> str:
        """Where the SuperNodes connect: the fleet gate once it is started, else the SuperLink."""
        return self.gate_address if self.gate is not None else self.address

    @property
    def server_dir(self) -> Path:
        return self.run_dir / "server"

    @property
    def run_folder(self) -> RunFolder:
        """The paths in ``server_dir``, the federation's run folder (``federation.output_dir``)."""
        return RunFolder(self.server_dir)

    def node_dir(self, name: str) -> Path:
        return self.run_dir / "nodes" / name

    def log_path(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            FLWR_HOME=str(self.run_dir / "flwr"),
            RAY_TMPDIR=str(self.run_dir / "tmp"),
            MPLCONFIGDIR=str(self.run_dir / "tmp"),
            HF_HUB_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            PYTHONUNBUFFERED="1",
            # Flower's processes start flower-superexec, flwr-serverapp and flwr-clientapp by name.
            PATH=f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}",
        )
        return env

    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _started(self, proc: Started) -> Started:
        self.processes.append(proc)
        write_pid_file(self.run_dir / "pids.json", self.processes)
        return proc

    # -- SuperLink -------------------------------------------------------------------------
    def start_superlink(self, *, port: int = 0, timeout: float = 60.0) -> Started:
        """Start the SuperLink and wait until ``GET /health`` answers over TLS."""
        self.port = port or free_port(self.host)
        m = self.material
        argv = [
            self._bin("flower-superlink"),
            "--ssl-ca-certfile",
            str(m.ca_cert),
            "--ssl-certfile",
            str(m.tls_cert),
            "--ssl-keyfile",
            str(m.tls_key),
            "--enable-supernode-auth",
            "--database",
            str(self.run_dir / "state.db"),
            "--disable-runtime-dependency-installation",
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        self.superlink = self._started(
            spawn("superlink", argv, env=self.env(), log_path=self.log_path("superlink"), cwd=self.run_dir)
        )
        context = ssl.create_default_context(cafile=str(m.ca_cert))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(self.superlink, "SuperLink")
            try:
                with urllib.request.urlopen(f"https://{self.address}/health", context=context, timeout=2) as r:
                    if r.status == 200:
                        self._write_connection()
                        return self.superlink
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise DeployError(
            f"SuperLink not healthy on https://{self.address}/health after {timeout:.0f} s; see {self.superlink.log}"
        )

    def start_gate(self, *, port: int = 0, timeout: float = 60.0) -> Started:
        """Start the fleet gate (``nebula fleet-gate``) in front of the running SuperLink; wait until it answers.

        SuperNodes started after this connect to the gate (:attr:`fleet_address`). Ready means: its TLS
        handshake passes with the CA and it refuses ``GET /`` with 403, as it refuses every non-Fleet path.
        """
        if self.superlink is None:
            raise DeployError("start the SuperLink before the fleet gate")
        self.gate_port = port or free_port(self.host)
        argv = [
            self._bin("nebula"),
            "fleet-gate",
            "--listen",
            self.gate_address,
            "--superlink",
            self.address,
            "--certs",
            str(self.material.root),
        ]
        gate = self._started(
            spawn("fleet-gate", argv, env=self.env(), log_path=self.log_path("fleet-gate"), cwd=self.run_dir)
        )
        context = ssl.create_default_context(cafile=str(self.material.ca_cert))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(gate, "fleet gate")
            try:
                urllib.request.urlopen(f"https://{self.gate_address}/", context=context, timeout=2).close()
            except urllib.error.HTTPError as exc:
                if exc.code == 403:
                    self.gate = gate
                    return gate
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise DeployError(
            f"fleet gate not answering on https://{self.gate_address} after {timeout:.0f} s; see {gate.log}"
        )

    def _write_connection(self) -> None:
        text = (
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f"address = {json.dumps(self.address)}\nroot-certificates = {json.dumps(str(self.material.ca_cert))}\n"
        )
        (self.run_dir / "flwr" / "config.toml").write_text(text)

    def _check_alive(self, proc: Started, what: str) -> None:
        if not proc.alive():
            raise DeployError(f"{what} exited (code {proc.returncode()}): {tail(proc.log)}")

    # -- the flwr CLI ----------------------------------------------------------------------
    def flwr(self, *args: str, timeout: float = 120.0) -> dict:
        """Run ``flwr ARGS --format json`` against this federation; its JSON answer."""
        cmd = [self._bin("flwr"), *args, "--format", "json"]
        done = subprocess.run(cmd, env=self.env(), cwd=self.run_dir, capture_output=True, text=True, timeout=timeout)
        out = done.stdout
        try:
            answer = json.loads(out[out.index("{") :])
        except ValueError:
            raise DeployError(
                f"`flwr {' '.join(args)}` gave no JSON (exit {done.returncode}): {out[-800:]} {done.stderr[-800:]}"
            ) from None
        if not answer.get("success", False):
            raise DeployError(f"`flwr {' '.join(args)}` failed: {answer.get('error-message', answer)}")
        return answer

    def register(self, name: str, public_key: Path) -> int:
        """``flwr supernode register KEY.pub nebula --name NAME``; the SuperNode id."""
        node_id = int(self.flwr("supernode", "register", str(public_key), CONNECTION, "--name", name)["node-id"])
        self.node_ids[name] = node_id
        return node_id

    def supernodes(self) -> dict[int, str]:
        """SuperNode id -> status (registered, online, offline ...), as the SuperLink sees them."""
        return {int(n["node-id"]): n["status"] for n in self.flwr("supernode", "list", CONNECTION)["nodes"]}

    # -- SuperNodes ------------------------------------------------------------------------
    def start_supernode(self, spec: NodeSpec, *, port: int = 0) -> Started:
        """Register ``spec``'s public key (unless ``registered=False``, or already registered here) and start its
        SuperNode."""
        key = spec.key or self.material.supernode_keys[spec.name]
        self.specs[spec.name] = spec
        if spec.worker:
            self.start_worker(spec.name)
        if spec.registered and spec.name not in self.node_ids:
            public = self.material.supernode_pubs[spec.name] if spec.key is None else key.with_suffix(".pub")
            self.register(spec.name, public)
            self.registered[spec.name] = (spec.role, spec.name, public.read_bytes())
        argv = [
            self._bin("flower-supernode"),
            "--superlink",
            self.fleet_address,
            "--root-certificates",
            str(self.material.ca_cert),
            "--auth-supernode-private-key",
            str(key),
            "--node-config",
            spec.node_config(self.node_dir(spec.name)),
            # Each SuperNode's own ClientApp I/O API: several on one host must not share a port.
            "--host",
            self.host,
            "--port",
            str(port or free_port(self.host)),
        ]
        return self._started(
            spawn(spec.name, argv, env=self.env(), log_path=self.log_path(spec.name), cwd=self.run_dir)
        )

    def start_worker(self, name: str, *, timeout: float = 120.0) -> Started:
        """Start node ``name``'s long-lived worker (``nebula worker``) and wait until its socket is up."""
        sock = worker_socket_path(self.node_dir(name))
        sock.parent.mkdir(parents=True, exist_ok=True)
        for stale in (sock, Path(f"{sock}.key")):
            stale.unlink(missing_ok=True)
        proc = self._started(
            spawn(
                f"{name}-worker",
                [self._bin("nebula"), "worker", "--socket", str(sock)],
                env=self.env(),
                log_path=self.log_path(f"{name}-worker"),
                cwd=self.run_dir,
            )
        )
        deadline = time.monotonic() + timeout
        while not (sock.exists() and Path(f"{sock}.key").exists()):
            self._check_alive(proc, f"worker of {name}")
            if time.monotonic() > deadline:
                raise DeployError(f"worker of {name} not listening on {sock} after {timeout:.0f} s; see {proc.log}")
            time.sleep(0.2)
        return proc

    def wait_online(self, names: Sequence[str], *, timeout: float = 90.0) -> None:
        """Until every named (registered) SuperNode is online; raises naming the ones that are not."""
        deadline, missing = time.monotonic() + timeout, list(names)
        while time.monotonic() < deadline:
            latest = {p.name: p for p in self.processes}  # the last process started under each name
            for name in missing:
                if name in latest:
                    self._check_alive(latest[name], f"SuperNode {name}")
            status = self.supernodes()
            missing = [n for n in names if status.get(self.node_ids[n]) != "online"]
            if not missing:
                return
            time.sleep(2.0)
        raise DeployError(
            f"SuperNode(s) {', '.join(missing)} not online after {timeout:.0f} s; "
            f"see their logs in {self.run_dir / 'logs'}"
        )

    def wait_offline(self, names: Sequence[str], *, timeout: float = 120.0) -> None:
        """Until the SuperLink counts none of the named SuperNodes online (a killed one: up to 60 s)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.supernodes()
            online = [n for n in names if status.get(self.node_ids[n]) == "online"]
            if not online:
                return
            if time.monotonic() > deadline:
                raise DeployError(f"SuperNode(s) {', '.join(online)} still online after {timeout:.0f} s")
            time.sleep(2.0)

    def kill_node(self, name: str, sig: int = signal.SIGKILL) -> list[ProcInfo]:
        """Send ``sig`` to node ``name``'s SuperNode and its worker, with their helpers, at once (the device
        losing power); whom."""
        members = family([p for p in self.processes if p.name in (name, f"{name}-worker")])
        send_signal(members, sig)
        return members

    def restart_node(self, name: str, *, timeout: float = 180.0) -> Started:
        """Start node ``name`` again as it was started (same key, node config and folder; its worker too) once
        the SuperLink no longer counts it online, and wait until it is; its new SuperNode process.

        The node keeps its registration and SuperNode id, so the running server addresses it as before; what
        its SuperNode held in memory (Flower's context state, e.g. the teacher's models) is gone.
        """
        if name not in self.specs:
            raise DeployError(f"node {name} was never started here; started: {', '.join(self.specs) or 'none'}")
        running = [p.name for p in self.processes if p.name in (name, f"{name}-worker") and p.alive()]
        if running:
            raise DeployError(f"{', '.join(running)} still running: stop or kill node {name} before restarting it")
        self.wait_offline([name], timeout=timeout)
        proc = self.start_supernode(self.specs[name])
        self.wait_online([name], timeout=timeout)
        return proc

    # -- runs ------------------------------------------------------------------------------
    def submit(self, *, preset: str = "quick", overrides: Mapping[str, object] | None = None) -> int:
        """``flwr run APP nebula --run-config FILE``; the run id.

        ``federation.output_dir`` defaults to ``RUN_DIR/server``. The run config goes as a TOML
        file so that no value needs shell quoting.
        """
        pairs = {"federation.output_dir": str(self.server_dir), **(overrides or {})}
        text = " ".join(f"{k}={v}" for k, v in pairs.items())
        if any(" " in str(v) or "'" in str(v) or '"' in str(v) for v in pairs.values()):
            raise DeployError(f"run config override values may not hold spaces or quotes: {text}")
        config = self.run_dir / "run-config.toml"
        config.write_text(f"preset = {json.dumps(preset)}\noverrides = {json.dumps(text)}\n")
        return int(self.flwr("run", str(self.app_dir), CONNECTION, "--run-config", str(config), timeout=300)["run-id"])

    def run_status(self, run_id: int) -> dict:
        """Flower's record of the run: ``status`` (e.g. ``finished:completed``), timestamps, ``elapsed``."""
        runs = self.flwr("list", CONNECTION, "--run-id", str(run_id))["runs"]
        return runs[0]

    def wait_run(self, run_id: int, *, timeout: float = 900.0, poll: float = 5.0) -> dict:
        """Poll until the run has finished; saves ``flwr log`` to ``logs/run-ID.log``; the final status."""
        deadline, status = time.monotonic() + timeout, {"status": "unknown"}
        while time.monotonic() < deadline:
            assert self.superlink is not None
            self._check_alive(self.superlink, "SuperLink")
            status = self.run_status(run_id)
            if str(status["status"]).startswith(DONE):
                self.save_run_log(run_id)
                (self.run_dir / f"run-{run_id}.json").write_text(json.dumps(status, indent=1))
                return status
            time.sleep(poll)
        self.save_run_log(run_id)
        raise DeployError(
            f"run {run_id} not finished after {timeout:.0f} s (status {status['status']}); see {self.run_dir / 'logs'}"
        )

    def save_run_log(self, run_id: int) -> Path:
        path = self.log_path(f"run-{run_id}")
        done = subprocess.run(
            [self._bin("flwr"), "log", str(run_id), CONNECTION, "--show"],
            env=self.env(),
            cwd=self.run_dir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        path.write_text(done.stdout + done.stderr)
        return path

    # -- stopping --------------------------------------------------------------------------
    def family(self) -> list[ProcInfo]:
        """Every live process this federation started, with Flower's helpers."""
        return family(self.processes)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> list[ProcInfo]:
        """Send ``sig`` to the named process and its helpers at once (a device losing power); whom."""
        members = family([p for p in self.processes if p.name == name])
        send_signal(members, sig)
        return members

    def stop(self, names: Sequence[str] | None = None, *, grace: float = 10.0) -> list[ProcInfo]:
        """Stop the named processes (default all) with their helpers; what survived (normally [])."""
        chosen = [p for p in self.processes if names is None or p.name in names]
        return stop(chosen, grace=grace)

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_federation(
    run_dir: str | Path,
    material: DeploymentMaterial,
    *,
    teacher: str,
    clients: Sequence[str],
    preset: str = "quick",
    overrides: Mapping[str, object] | None = None,
    port: int = 0,
    workers: bool = False,
    data: Mapping[str, str | Path] | None = None,
    text_field: str = "",
    label_field: str = "",
    gate: bool = True,
    gate_port: int = 0,
) -> tuple[LocalFederation, int]:
    """SuperLink, the registered teacher and client SuperNodes, the run submitted: ``(federation, run id)``.

    ``data.num_clients`` is set to ``len(clients)``. ``data`` (client name -> its own file or folder),
    ``text_field`` and ``label_field``: as :func:`federation_nodes`. ``gate`` (default): the fleet gate runs
    on ``gate_port`` (0: a free one) and the SuperNodes connect through it. If any step fails, everything
    started is stopped before the error propagates.
    """
    nodes = federation_nodes(
        teacher, clients, workers=workers, data=data, text_field=text_field, label_field=label_field
    )
    fed = LocalFederation(run_dir, material)
    try:
        fed.start_superlink(port=port)
        if gate:
            fed.start_gate(port=gate_port)
        for spec in nodes:
            fed.start_supernode(spec)
        fed.wait_online([n.name for n in nodes])
        # The server takes each node's role and client id from its registered key (server/identity.py).
        registry = write_registry(fed.run_dir / "nodes.json", fed.registered)
        pinned = {"data.num_clients": len(clients), "federation.node_registry": str(registry.resolve())}
        return fed, fed.submit(preset=preset, overrides={**pinned, **(overrides or {})})
    except BaseException:
        fed.stop()
        raise


def down(run_dir: str | Path, *, grace: float = 10.0) -> list[ProcInfo]:
    """Stop what ``pids.json`` of ``run_dir`` names (``nebula deploy down``); the survivors."""
    path = Path(run_dir) / "pids.json"
    if not path.exists():
        raise DeployError(f"{path} not found: nothing was started in {run_dir}, or it was already stopped")
    survivors = stop(read_pid_file(path), grace=grace)
    if not survivors:
        path.unlink()
    return survivors


def round_timing(row: Mapping) -> dict[str, float]:
    """Wall time of a round (one ``metrics.jsonl`` row) against the compute inside it.

    The clients work in parallel, then the teacher: the compute on the round's critical path
    is the slowest accepted client's ``seconds`` plus the teacher's. ``ratio`` = wall / compute
    (the target: <= 1.5); the rest is transport, process start-up and model loading.
    """
    clients = max((float(m.get("seconds", 0.0)) for m in row.get("clients", {}).values()), default=0.0)
    teacher = float(row.get("teacher_seconds") or 0.0)
    compute = clients + teacher
    wall = float(row["seconds"])
    return {
        "wall": wall,
        "compute": compute,
        "ratio": wall / compute if compute > 0 else float("inf"),
        "clients_wait": float(row.get("clients_wait_seconds", 0.0)),
        "clients_compute": clients,
        "teacher_wait": float(row.get("teacher_wait_seconds", 0.0)),
        "teacher_compute": teacher,
    }


def tail(path: str | Path, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no log at {path})"
