"""``nebula certs``, ``nebula deploy up|down`` and ``nebula fleet-gate``.

Loaded by the ``nebula`` group when one of them is named (cli/main.py, ``NebulaGroup``): Flower, grpc and
cryptography load with this module.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import click
import typer

from nebula.cli._args import command
from nebula.cli._output import fail, say
from nebula.common.config import ConfigError
from nebula.common.presets import PRESETS, preset_config
from nebula.deploy.pki import DEFAULT_HOSTS, DEFAULT_NODES, DeploymentMaterial, PkiError, write_deployment_material

HOSTS, NODES, CLIENTS = ",".join(DEFAULT_HOSTS), ",".join(DEFAULT_NODES), ",".join(DEFAULT_NODES[1:])  # defaults

app = typer.Typer()
deploy = typer.Typer(
    no_args_is_help=True,
    help="Run a federation on this host over Flower's deployment engine (TLS, SuperNode authentication).",
)
app.add_typer(deploy, name="deploy")


@command(
    app,
    "certs",
    "Write a CA, the SuperLink's TLS certificate, SuperNode authentication keys and operator keys. "
    "Private keys are unencrypted, mode 0600.",
)
def certs(
    out_dir: Annotated[str, typer.Argument(metavar="OUT_DIR", help="folder to write (created if missing)")],
    hosts: Annotated[str, typer.Option(help="comma list of the SuperLink's host names / IP addresses")] = HOSTS,
    nodes: Annotated[str, typer.Option(help="comma list of SuperNode names, one key pair each")] = NODES,
    operators: Annotated[
        str, typer.Option(help="comma list of operator names, one Ed25519 key pair each")
    ] = "operator",
    force: Annotated[
        bool,
        typer.Option("--force", help="overwrite existing files (a new CA invalidates every certificate it issued)"),
    ] = False,
) -> int:
    try:
        m = write_deployment_material(
            out_dir, hosts=_names(hosts), nodes=_names(nodes), operators=_names(operators), force=force
        )
    except PkiError as exc:
        return fail(str(exc))
    say(f"CA                 {m.ca_cert} (key {m.ca_key}: keep offline)")
    say(f"SuperLink TLS      {m.tls_cert}, {m.tls_key} for {hosts}")
    for name in m.supernode_keys:
        keys = f"{m.supernode_keys[name]} (private, stays on the node), {m.supernode_pubs[name]} (register)"
        say(f"SuperNode {name:8s} {keys}")
    for name in m.operator_keys:
        say(f"operator {name:9s} {m.operator_keys[name]} (private), {m.operators_dir}/{name}.pub")
    say(f"server signing     {m.signing_key}, {m.signing_pub}")
    return 0


def _names(text: str) -> list[str]:
    """A comma list's names."""
    return [x.strip() for x in text.split(",") if x.strip()]


@command(
    app,
    "fleet-gate",
    "TLS proxy in front of the SuperLink that forwards the Fleet API (SuperNodes) only; 403 for the rest. "
    "The SuperLink listens on loopback; SuperNodes connect here. See deploy/fleet_gate.py.",
)
def fleet_gate(
    listen: Annotated[str, typer.Option(metavar="HOST:PORT", help="where the gate listens, e.g. 0.0.0.0:9092")],
    superlink: Annotated[
        str, typer.Option(metavar="HOST:PORT", help="the SuperLink (on loopback), e.g. 127.0.0.1:9093")
    ],
    certs: Annotated[
        str,
        typer.Option(
            metavar="DIR",
            help="folder written by `nebula certs`: server.pem / server.key (the gate's TLS), ca.pem (verifies the "
            "SuperLink, whose certificate must name the --superlink host)",
        ),
    ],
    max_body_mib: Annotated[
        float,
        typer.Option(
            click_type=click.FloatRange(min=0, min_open=True), help="largest request body forwarded, MiB (413 above)"
        ),
    ] = 64.0,
) -> int:
    from nebula.deploy.fleet_gate import serve, split_address

    try:
        split_address(listen)
        split_address(superlink)
        serve(listen, superlink, certs, max_body=int(max_body_mib * 1024 * 1024))
    except (ValueError, FileNotFoundError) as exc:
        return fail(str(exc))
    return 0


# -- deploy up / down ---------------------------------------------------------------------------
def _client_data(items: list[str], clients: list[str]) -> dict[str, Path]:
    """``--data NAME=PATH`` items as {client name: absolute path}; ValueError naming a bad item."""
    data: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ValueError(f"--data {item!r}: expected NAME=PATH")
        if name not in clients:
            raise ValueError(f"--data {item!r}: {name!r} is not a client node (clients: {', '.join(clients)})")
        if name in data:
            raise ValueError(f"--data names {name!r} twice")
        resolved = Path(path).expanduser().resolve()
        if not resolved.exists():
            raise ValueError(f"--data {item!r}: {resolved} not found")
        data[name] = resolved
    return data


@dataclass(frozen=True)
class UpInputs:
    """``deploy up``'s checked inputs."""

    clients: list[str]
    overrides: dict[str, str]  # flat config keys, from --set
    data: dict[str, Path]  # client name -> its own file or folder, from --data
    material: DeploymentMaterial


def _overrides(items: list[str], preset: str, clients: list[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` items as flat keys, checked over ``preset`` as the run will use them."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = value
    try:
        preset_config(preset, {**overrides, "data.num_clients": len(clients)})
    except ConfigError as exc:
        given = f"--preset {preset}, {len(clients)} client node(s)" + (", --set" if items else "")
        raise ValueError(f"the run's configuration ({given}): {exc}") from None
    return overrides


def _up_inputs(
    certs: str, teacher: str, clients: list[str], *, preset: str, sets: list[str], data: list[str], fields: bool
) -> UpInputs:
    """Check ``deploy up``'s arguments before anything starts; ValueError naming the option."""
    own = _client_data(data, clients)
    if fields and not own:
        raise ValueError("--text-field / --label-field need --data")
    material = DeploymentMaterial.at(certs, [teacher, *clients])
    needed = (
        material.ca_cert,
        material.tls_cert,
        material.tls_key,
        *material.supernode_keys.values(),
        *material.supernode_pubs.values(),
    )
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise ValueError(
            f"missing in {certs}: {', '.join(missing)} (make them with `nebula certs {certs} "
            f"--nodes {teacher},{','.join(clients)}`)"
        )
    return UpInputs(clients, _overrides(sets, preset, clients), own, material)


def _print_rounds(fed) -> None:
    """One line a round of the finished run: replies, and wall time against the compute inside it."""
    from nebula.deploy.local import round_timing

    metrics = fed.run_folder.metrics
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        row = json.loads(line)
        t = round_timing(row)
        print(
            f"  round {row['round']}: {row['accepted']} replies (rejected: {row['rejected'] or '-'}); "
            f"wall {t['wall']:.1f} s vs compute {t['compute']:.1f} s = {t['ratio']:.2f}x | clients: wait "
            f"{t['clients_wait']:.1f} s, slowest compute {t['clients_compute']:.1f} s | teacher: wait "
            f"{t['teacher_wait']:.1f} s, compute {t['teacher_compute']:.1f} s"
        )


# deploy up's options
RunDir = Annotated[
    Path, typer.Argument(metavar="RUN_DIR", help="folder of this deployment: logs, state, FLWR_HOME, output")
]
Certs = Annotated[str, typer.Option(metavar="DIR", help="folder written by `nebula certs` (with a key per node)")]
TeacherNode = Annotated[str, typer.Option(metavar="NAME", help="name of the teacher SuperNode")]
OldTeacherNode = Annotated[str | None, typer.Option("--teacher", metavar="NAME", hidden=True)]  # renamed
Clients = Annotated[str, typer.Option(help="comma list of client SuperNode names, partitions 0..n-1")]
OwnData = Annotated[
    list[str],
    typer.Option(
        "--data",
        metavar="NAME=PATH",
        help="client NAME trains on its own labelled CSV / JSON-lines file or folder PATH instead of its "
        "partition of data.dataset (repeatable; only that node's config names PATH)",
    ),
]
TextField = Annotated[str, typer.Option(help="with --data: text column of the files (default: data.text_field)")]
LabelField = Annotated[str, typer.Option(help="with --data: label column of the files (default: data.label_field)")]
RunPreset = Annotated[str, typer.Option(click_type=click.Choice(sorted(PRESETS)), help="run config preset")]
Sets = Annotated[
    list[str],
    typer.Option("--set", metavar="KEY=VALUE", help="config override, e.g. --set federation.rounds=1 (repeatable)"),
]
Port = Annotated[
    int, typer.Option(min=0, max=65535, help="SuperLink port on 127.0.0.1 (Fleet, Control and Runtime APIs; 0: free)")
]
GatePort = Annotated[
    int,
    typer.Option(
        min=0, max=65535, help="fleet gate port on 127.0.0.1: the SuperNodes connect here, Fleet API only (0: free)"
    ),
]
NoGate = Annotated[
    bool, typer.Option("--no-gate", help="no fleet gate: the SuperNodes connect to the SuperLink itself (all its APIs)")
]
Workers = Annotated[
    bool,
    typer.Option(
        "--workers",
        help="start a long-lived local worker (`nebula worker`) beside each SuperNode: no torch import or model "
        "load per message",
    ),
]
Wait = Annotated[
    bool, typer.Option("--wait", help="wait for the run to finish, print its rounds, then stop everything")
]
WaitTimeout = Annotated[float, typer.Option(help="with --wait: seconds to wait for the run")]


@command(
    deploy,
    "up",
    "Start a SuperLink, register and start the teacher and client SuperNodes, submit the run. "
    "Processes keep running until `nebula deploy down` unless --wait.",
)
def up(
    run_dir: RunDir,
    certs: Certs,
    teacher_node: TeacherNode = DEFAULT_NODES[0],
    teacher: OldTeacherNode = None,
    clients: Clients = CLIENTS,
    data: OwnData = [],  # noqa: B006  (typer reads the default; never mutated)
    text_field: TextField = "",
    label_field: LabelField = "",
    preset: RunPreset = "quick",
    set_: Sets = [],  # noqa: B006
    port: Port = 9093,
    gate_port: GatePort = 9092,
    no_gate: NoGate = False,
    workers: Workers = False,
    wait: Wait = False,
    wait_timeout: WaitTimeout = 3600.0,
) -> int:
    if teacher is not None:
        print("warning: nebula deploy up --teacher is now --teacher-node", file=sys.stderr)
        teacher_node = teacher
    names = _names(clients)
    try:
        inputs = _up_inputs(
            certs, teacher_node, names, preset=preset, sets=set_, data=data, fields=bool(text_field or label_field)
        )
    except ValueError as exc:
        return fail(str(exc))
    from nebula.deploy.local import DeployError, start_federation

    t0 = time.perf_counter()
    try:
        fed, run_id = start_federation(
            run_dir, inputs.material, teacher=teacher_node, clients=inputs.clients, preset=preset,
            overrides=inputs.overrides, port=port, workers=workers, data=inputs.data, text_field=text_field,
            label_field=label_field, gate=not no_gate, gate_port=gate_port,
        )  # fmt: skip
    except DeployError as exc:
        return fail(str(exc), 1)
    gate = f", fleet gate https://{fed.gate_address} (SuperNodes)" if fed.gate is not None else ""
    pids = fed.run_dir / "pids.json"
    say(f"SuperLink https://{fed.address}{gate}, {len(fed.processes)} processes (pids in {pids}); run {run_id}")
    if not wait:
        say(f"follow: FLWR_HOME={fed.run_dir / 'flwr'} flwr log {run_id} nebula\nstop:   nebula deploy down {run_dir}")
        return 0
    return _wait(fed, run_id, timeout=wait_timeout, started=t0)


def _wait(fed, run_id: int, *, timeout: float, started: float) -> int:
    """Wait for the run, print its rounds, stop every process: 0 if it completed."""
    from nebula.deploy.local import DeployError

    try:
        status = fed.wait_run(run_id, timeout=timeout)
        say(
            f"run {run_id}: {status['status']} in {time.perf_counter() - started:.0f} s "
            f"(Flower: {status['elapsed']:.0f} s running)"
        )
        _print_rounds(fed)
        return 0 if status["status"] == "finished:completed" else 1
    except DeployError as exc:
        return fail(str(exc), 1)
    finally:
        survivors = fed.stop()
        say("stopped every process" if not survivors else f"still running: {[s.pid for s in survivors]}")


@command(
    deploy, "down", "Stop every process `nebula deploy up` started in RUN_DIR (by process id, SIGTERM then SIGKILL)."
)
def down(run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR")]) -> int:
    from nebula.deploy.local import DeployError
    from nebula.deploy.local import down as stop_all

    try:
        survivors = stop_all(run_dir)
    except DeployError as exc:
        return fail(str(exc))
    if survivors:
        return fail(f"still running after SIGKILL: {', '.join(str(s.pid) for s in survivors)}", 1)
    say("stopped")
    return 0
