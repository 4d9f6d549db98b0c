"""``nebula certs``, ``nebula deploy up|down`` and ``nebula fleet-gate``.

All are registered on the ``nebula`` command by :func:`add_deploy_commands`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from nebula.cli._args import add_command, add_required
from nebula.deploy.pki import DEFAULT_NODES, DeploymentMaterial, add_certs_parser


def add_deploy_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``certs``, ``deploy`` and ``fleet-gate`` to the subparsers of the ``nebula`` command."""
    add_certs_parser(sub)
    text = "TLS proxy in front of the SuperLink that forwards the Fleet API (SuperNodes) only; 403 for the rest"
    more = ". The SuperLink listens on loopback; SuperNodes connect here. See deploy/fleet_gate.py."
    p = add_command(sub, "fleet-gate", text, _fleet_gate, more=more)
    add_required(
        p,
        ("--listen", "HOST:PORT", "where the gate listens, e.g. 0.0.0.0:9092"),
        ("--superlink", "HOST:PORT", "the SuperLink (on loopback), e.g. 127.0.0.1:9093"),
        (
            "--certs",
            "DIR",
            "folder written by `nebula certs`: server.pem / server.key (the gate's TLS), ca.pem (verifies the "
            "SuperLink, whose certificate must name the --superlink host)",
        ),
    )
    p.add_argument(
        "--max-body-mib", type=float, default=64.0, help="largest request body forwarded, MiB (default 64; 413 above)"
    )

    text = "run a federation on this host over Flower's deployment engine (TLS, SuperNode authentication)"
    deploy = sub.add_parser("deploy", help=text, description=text)
    steps = deploy.add_subparsers(dest="deploy_command", required=True)

    text = "start a SuperLink, register and start the teacher and client SuperNodes, submit the run"
    p = add_command(steps, "up", text, _up, more=". Processes keep running until `nebula deploy down` unless --wait.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder of this deployment: logs, state, FLWR_HOME, output")
    add_required(p, ("--certs", "DIR", "folder written by `nebula certs` (with a key per node)"))
    p.add_argument(
        "--teacher", default=DEFAULT_NODES[0], help=f"name of the teacher SuperNode (default {DEFAULT_NODES[0]})"
    )
    p.add_argument(
        "--clients",
        default=",".join(DEFAULT_NODES[1:]),
        help=f"comma list of client SuperNode names, partitions 0..n-1 (default {','.join(DEFAULT_NODES[1:])})",
    )
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="client NAME trains on its own labelled CSV / JSON-lines file or folder PATH instead of its "
        "partition of data.dataset (repeatable; only that node's config names PATH)",
    )
    for column in ("text", "label"):
        p.add_argument(
            f"--{column}-field",
            default="",
            help=f"with --data: {column} column of the files (default: the run's data.{column}_field)",
        )
    p.add_argument("--preset", default="quick", help="run config preset (default quick)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set federation.rounds=1 (repeatable)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=9093,
        help="SuperLink port on 127.0.0.1 (Fleet, Control and Runtime APIs; default 9093, 0: free)",
    )
    p.add_argument(
        "--gate-port",
        type=int,
        default=9092,
        help="fleet gate port on 127.0.0.1: the SuperNodes connect here, Fleet API only (default 9092, 0: free)",
    )
    p.add_argument(
        "--no-gate",
        action="store_true",
        help="no fleet gate: the SuperNodes connect to the SuperLink itself (all its APIs)",
    )
    p.add_argument(
        "--workers",
        action="store_true",
        help="start a long-lived local worker beside each SuperNode (client/worker.py): no torch import or "
        "model load per message",
    )
    p.add_argument(
        "--wait", action="store_true", help="wait for the run to finish, print its rounds, then stop everything"
    )
    p.add_argument(
        "--timeout", type=float, default=3600.0, help="with --wait: seconds to wait for the run (default 3600)"
    )

    text = "stop every process `nebula deploy up` started in RUN_DIR (by process id, SIGTERM then SIGKILL)"
    add_command(steps, "down", text, _down).add_argument("run_dir", metavar="RUN_DIR")


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


class _UsageError(ValueError):
    """A bad ``deploy up`` argument: printed as ``error: ...``, exit 2."""


def _up_inputs(args: argparse.Namespace) -> tuple[list[str], dict, dict, DeploymentMaterial]:
    """``deploy up``'s checked inputs: clients, config overrides, each client's own data, the key material."""
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise _UsageError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = value
    data = _client_data(args.data, clients)
    if (args.text_field or args.label_field) and not data:
        raise _UsageError("--text-field / --label-field need --data")
    material = DeploymentMaterial.at(args.certs, [args.teacher, *clients])
    needed = (
        material.ca_cert,
        material.tls_cert,
        material.tls_key,
        *material.supernode_keys.values(),
        *material.supernode_pubs.values(),
    )
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise _UsageError(
            f"missing in {args.certs}: {', '.join(missing)} (make them with `nebula certs {args.certs} "
            f"--nodes {args.teacher},{','.join(clients)}`)"
        )
    return clients, overrides, data, material


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


def _up(args: argparse.Namespace) -> int:
    from nebula.deploy.local import DeployError, start_federation

    try:
        clients, overrides, data, material = _up_inputs(args)
    except ValueError as exc:  # _UsageError, or a bad --data entry
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        fed, run_id = start_federation(
            args.run_dir, material, teacher=args.teacher, clients=clients, preset=args.preset, overrides=overrides,
            port=args.port, workers=args.workers, data=data, text_field=args.text_field,
            label_field=args.label_field, gate=not args.no_gate, gate_port=args.gate_port,
        )  # fmt: skip
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    gate = f", fleet gate https://{fed.gate_address} (SuperNodes)" if fed.gate is not None else ""
    print(
        f"SuperLink https://{fed.address}{gate}, {len(fed.processes)} processes "
        f"(pids in {fed.run_dir / 'pids.json'}); run {run_id}"
    )
    if not args.wait:
        print(
            f"follow: FLWR_HOME={fed.run_dir / 'flwr'} flwr log {run_id} nebula\n"
            f"stop:   nebula deploy down {args.run_dir}"
        )
        return 0
    try:
        status = fed.wait_run(run_id, timeout=args.timeout)
        print(
            f"run {run_id}: {status['status']} in {time.perf_counter() - t0:.0f} s "
            f"(Flower: {status['elapsed']:.0f} s running)"
        )
        _print_rounds(fed)
        return 0 if status["status"] == "finished:completed" else 1
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        survivors = fed.stop()
        print("stopped every process" if not survivors else f"still running: {[s.pid for s in survivors]}", flush=True)


def _down(args: argparse.Namespace) -> int:
    from nebula.deploy.local import DeployError, down

    try:
        survivors = down(Path(args.run_dir))
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if survivors:
        print(f"still running after SIGKILL: {', '.join(str(s.pid) for s in survivors)}", file=sys.stderr)
        return 1
    print("stopped")
    return 0


def _fleet_gate(args: argparse.Namespace) -> int:
    from nebula.deploy.fleet_gate import serve, split_address

    try:
        split_address(args.listen)
        split_address(args.superlink)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.max_body_mib <= 0:
        print("error: --max-body-mib must be positive", file=sys.stderr)
        return 2
    try:
        serve(args.listen, args.superlink, args.certs, max_body=int(args.max_body_mib * 1024 * 1024))
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
