"""``nebula unlearn``: the operator's commands and the service's own.

    nebula unlearn CLIENT --reason TEXT --mode purge|reaggregate|exact-replay|fast-correction
        --server HOST:PORT --ca CA.pem --key OPERATOR.key [--server-key SERVER-SIGNING.pub]
    nebula unlearn status ID ...      nebula unlearn list ...
    nebula unlearn verify CERT.json --server-key SERVER-SIGNING.pub
    nebula unlearn serve --ledger runs/latest/ledger.sqlite --operators DIR --signing-key KEY
        --tls-cert PEM --tls-key KEY
    nebula unlearn benchmark [--preset benchmark] [--client client-3] [--out runs/unlearn-benchmark]

``nebula unlearn CLIENT`` is ``nebula unlearn submit CLIENT`` (:func:`rewrite_argv`); a client
whose id is one of the subcommand names is submitted with the explicit ``submit``. The operator
commands sign every call for one deployment: the one whose signing public key ``--server-key`` names
(default: ``server-signing.pub`` next to the ``--ca`` file, as ``nebula certs`` lays them out).
Exit codes: 0 done, 1 a request failed, a certificate does not verify or the service is
unreachable, 2 bad input (arguments, files, or a call the service refused as malformed,
unknown or unauthorised).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

from nebula.cli._args import add_command, add_required

SUBCOMMANDS = ("submit", "status", "list", "verify", "serve", "benchmark")
REFUSED = ("INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "UNAUTHENTICATED")


def rewrite_argv(argv: list[str]) -> list[str]:
    """``[... "unlearn", CLIENT, ...]`` -> ``[... "unlearn", "submit", CLIENT, ...]`` when CLIENT is no subcommand."""
    words = [i for i, a in enumerate(argv) if not a.startswith("-")]
    if not words or argv[words[0]] != "unlearn":
        return argv
    i = words[0] + 1
    if i < len(argv) and not argv[i].startswith("-") and argv[i] not in SUBCOMMANDS:
        return argv[:i] + ["submit"] + argv[i:]
    return argv


def add_unlearn_parser(sub: argparse._SubParsersAction) -> None:
    text = "forget a client on an operator's request (gRPC over TLS, signed requests), and check certificates"
    group = sub.add_parser(
        "unlearn", help=text, description=text + ". `nebula unlearn CLIENT ...` is `nebula unlearn submit CLIENT ...`."
    )
    cmds = group.add_subparsers(
        dest="unlearn_command", required=True, metavar="{CLIENT,submit,status,list,verify,serve,benchmark}"
    )
    for add_operator_command in (_add_submit_parser, _add_status_parser, _add_list_parser):
        _operator_args(add_operator_command(cmds))  # after the command's own options
    _add_verify_parser(cmds)
    _add_serve_parser(cmds)
    _add_benchmark_parser(cmds)


def _operator_args(p: argparse.ArgumentParser) -> None:
    """The options every command that calls the service takes."""
    add_required(
        p,
        ("--server", "HOST:PORT", "address of the unlearning service"),
        ("--ca", "CA.pem", "CA certificate that issued the service's TLS certificate"),
        ("--key", "OPERATOR.key", "your Ed25519 private key (PEM); the service must trust its public key"),
    )
    p.add_argument(
        "--server-key",
        default=None,
        metavar="PATH",
        help="the service's Ed25519 signing public key (PEM, server-signing.pub from `nebula certs`): calls are "
        "signed for that deployment only, and another service refuses them (default: server-signing.pub next to "
        "the --ca file, if it exists)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per call (default 10)")


def _add_submit_parser(cmds: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``nebula unlearn submit`` (less the operator options)."""
    from nebula.server.unlearning import available_modes
    from nebula.server.unlearning.registry import mode_summaries

    text = "submit an unlearn request (stored durably before it is acknowledged; idempotent per --request-key)"
    p = add_command(cmds, "submit", text, _submit)
    p.add_argument("client", metavar="CLIENT", help="id of the client to forget (as in the ledger, e.g. client-3)")
    p.add_argument("--reason", required=True, help="why (kept in the request and the certificate)")
    modes = "; ".join(f"{name}: {text}" for name, text in mode_summaries().items())
    p.add_argument("--mode", required=True, choices=available_modes(), help=modes)
    p.add_argument(
        "--request-key",
        default=None,
        metavar="K",
        help="idempotency key: submitting again with the same key and content gives the same request id "
        "(default: a new random key)",
    )
    p.add_argument("--wait", action="store_true", help="poll until the request is done or failed")
    p.add_argument("--wait-timeout", type=float, default=300.0, help="seconds --wait polls at most (default 300)")
    p.add_argument("--out", default=None, metavar="CERT.json", help="with --wait: write the signed certificate here")
    return p


def _add_status_parser(cmds: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``nebula unlearn status`` (less the operator options)."""
    text = "show one request: status, error, attempts; --out writes its certificate once done"
    p = add_command(cmds, "status", text, _status)
    p.add_argument("request_id", metavar="ID")
    p.add_argument(
        "--out", default=None, metavar="CERT.json", help="write the signed certificate here (request must be done)"
    )
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    return p


def _add_list_parser(cmds: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``nebula unlearn list`` (less the operator options)."""
    from nebula.server.unlearning.requests import STATUSES

    p = add_command(cmds, "list", "list requests, newest first", _list)
    p.add_argument("--status", default="", choices=("",) + STATUSES, help="only requests with this status")
    p.add_argument("--limit", type=int, default=100, help="at most this many (1 to 1000, default 100)")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    return p


def _add_verify_parser(cmds: argparse._SubParsersAction) -> None:
    """``nebula unlearn verify``."""
    text = "check a certificate's signature against the server's public key (no network needed)"
    p = add_command(cmds, "verify", text, _verify)
    p.add_argument("certificate", metavar="CERT", help="certificate JSON file")
    add_required(p, ("--server-key", "PUB.pem", "the server's Ed25519 public key (PEM)"))


def _add_serve_parser(cmds: argparse._SubParsersAction) -> None:
    """``nebula unlearn serve``."""
    text = "run the unlearning service on a ledger; it carries out requests at once (no live run)"
    more = ". Stop with Ctrl-C; unfinished requests resume at the next start."
    p = add_command(cmds, "serve", text, _serve, more=more)
    p.add_argument("--ledger", required=True, help="the federation's ledger.sqlite")
    add_required(
        p,
        ("--operators", "DIR", "trusted operators' Ed25519 public keys: folder of *.pem/*.pub, or one file"),
        ("--signing-key", "KEY", "the server's Ed25519 private key (PEM): signs certificates"),
        ("--tls-cert", "PEM", "the service's TLS certificate, issued by the operators' CA"),
        ("--tls-key", "KEY", "its private key"),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50061, help="port (default 50061; 0: any free port, printed at start)")
    p.add_argument("--store", default=None, help="request store (default: tables in the ledger file)")
    p.add_argument(
        "--certificates-dir", default=None, help="copies of certificates (default: <ledger folder>/certificates)"
    )
    p.add_argument(
        "--window",
        type=float,
        default=300.0,
        help="seconds a signed call's timestamp may differ from this clock (default 300)",
    )


def _add_benchmark_parser(cmds: argparse._SubParsersAction) -> None:
    """``nebula unlearn benchmark``."""
    from nebula.common.config import add_arguments
    from nebula.common.presets import PRESETS
    from nebula.server.unlearning import available_modes

    text = (
        "simulate a federation, forget one client with each mode, retrain without it, and print the verification "
        "table (accuracy on the forgotten client's data, the others' data and the test set, membership-inference AUC, "
        "seconds against retraining)"
    )
    p = add_command(cmds, "benchmark", text, _benchmark, more=". Writes OUT/unlearning.md and OUT/unlearning.json.")
    p.add_argument(
        "--preset",
        default="benchmark",
        choices=sorted(PRESETS),
        help="the federation's configuration (default benchmark: 10 clients)",
    )
    p.add_argument(
        "--client", default="", help="client id to forget (default: the client with the most private training examples)"
    )
    p.add_argument("--modes", default="", help=f"comma list of modes (default: all: {', '.join(available_modes())})")
    p.add_argument(
        "--out",
        default="runs/unlearn-benchmark",
        help="folder for the runs, copies and the table (default runs/unlearn-benchmark)",
    )
    from nebula.server.unlearning.fast_correction import CorrectionBudget

    budget = CorrectionBudget()
    p.add_argument(
        "--correction-teacher-steps",
        type=int,
        default=budget.teacher_steps,
        help=f"fast-correction budget: teacher optimizer steps (default {budget.teacher_steps})",
    )
    p.add_argument(
        "--correction-student-steps",
        type=int,
        default=budget.student_steps,
        help=f"fast-correction budget: student optimizer steps (default {budget.student_steps})",
    )
    p.add_argument(
        "--repeat-retraining",
        action="store_true",
        help="retrain a second time with the same configuration (row 'retrained-again'): retraining's own "
        "run-to-run spread, the floor under which a mode's gap means nothing",
    )
    p.add_argument("--workers", type=int, default=None, help="parallel simulation workers (default: CPU cores)")
    add_arguments(p)  # any configuration field over the preset, as `nebula simulate` takes them


# -- operator commands -------------------------------------------------------------------------
def _client(args: argparse.Namespace):
    from nebula.server.unlearning.client import SERVER_KEY_NAME, OperatorClient, server_key_beside

    server_key = args.server_key or server_key_beside(args.ca)
    if server_key is None:
        raise ValueError(
            f"--server-key PATH is needed: the service's signing public key ({SERVER_KEY_NAME} from `nebula certs`), "
            f"which names the deployment the calls are signed for; there is no {SERVER_KEY_NAME} next to the --ca "
            f"file {args.ca}"
        )
    return OperatorClient(args.server, ca=args.ca, key=args.key, server_key=server_key, timeout_s=args.timeout)


def _operator_command(run):
    """Open the client, run the command, turn refusals and bad files into messages and exit codes."""

    def command(args: argparse.Namespace) -> int:
        from nebula.server.unlearning.client import OperatorCallError

        try:
            with _client(args) as api:
                return run(api, args)
        except ValueError as exc:  # unreadable key, CA or server key file; no server key
            return _fail(str(exc), 2)
        except OperatorCallError as exc:
            return _fail(str(exc), 2 if exc.code.name in REFUSED else 1)

    return command


@_operator_command
def _submit(api, args: argparse.Namespace) -> int:
    if args.out and not args.wait:
        return _fail("--out needs --wait (the certificate exists once the request is done)", 2)
    key = args.request_key or uuid.uuid4().hex
    reply = api.submit(args.client, reason=args.reason, mode=args.mode, idempotency_key=key)
    print(
        f"request {reply.request_id} {reply.status}{'' if reply.created else ' (already submitted with this key)'}"
        f" (request key {key})",
        flush=True,
    )
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.wait_timeout
    status = api.status(reply.request_id)
    while status.status in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.2)
        status = api.status(reply.request_id)
    return _report(status, out=args.out)


@_operator_command
def _status(api, args: argparse.Namespace) -> int:
    status = api.status(args.request_id)
    if args.json:
        print(json.dumps(_as_dict(status), indent=2))
        return 0 if status.status != "failed" else 1
    return _report(status, out=args.out)


@_operator_command
def _list(api, args: argparse.Namespace) -> int:
    requests = api.list(status=args.status, limit=args.limit)
    for r in requests:
        if args.json:
            print(json.dumps({k: v for k, v in _as_dict(r).items() if k != "certificate_json"}))
        else:
            print(f"{r.request_id}  {r.status:7s}  {r.mode:11s}  {r.client_id}  {r.created_at}  {r.reason}")
    if not args.json:
        print(f"{len(requests)} request(s)")
    return 0


def _report(status, *, out: str | None) -> int:
    print(
        f"request {status.request_id}: {status.status} "
        f"({status.mode} client {status.client_id}, attempts {status.attempts})"
    )
    if status.status == "failed":
        return _fail(f"request {status.request_id} failed: {status.error}", 1)
    if status.status != "done":
        if out:
            return _fail(f"request {status.request_id} is {status.status}: no certificate yet", 1)
        return 0
    cert = json.loads(status.certificate_json)
    removed = cert["ledger_rows_removed"]["count"]
    rounds = ", ".join(f"{r['run_id']}/{r['round']}" for r in cert["rounds_affected"]) or "none"
    print(
        f"  {removed} ledger rows removed, {len(cert['consensus'])} round consensus recomputed, "
        f"rounds affected: {rounds}"
    )
    models = cert.get("models")
    if models is None:
        print("  models: unchanged (this mode acts on the ledger only)")
    elif not models.get("changed"):
        print(f"  models: unchanged ({models.get('note', '')})")
    else:
        print(
            f"  models: teacher and global student changed, written to {models['output']} (run folder), "
            f"teacher sha256 {models['teacher']['after_sha256'][:16]}..., "
            f"student sha256 {models['student']['after_sha256'][:16]}..."
        )
    if out:
        Path(out).write_text(status.certificate_json, encoding="utf-8")
        print(f"  certificate: {out}")
    return 0


def _as_dict(message) -> dict:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


# -- verify and serve --------------------------------------------------------------------------
def _verify(args: argparse.Namespace) -> int:
    from nebula.server.exceptions import CertificateError, MalformedCertificate
    from nebula.server.unlearning.certificate import verify_certificate

    if not Path(args.certificate).is_file():
        return _fail(f"{args.certificate}: no such file", 2)
    try:
        cert = verify_certificate(args.certificate, args.server_key)
    except CertificateError as exc:
        return _fail(f"certificate does not verify: {exc}", 2 if isinstance(exc, MalformedCertificate) else 1)
    print(
        f"valid: request {cert['request_id']}, {cert['mode']} of client {cert['client_id']} at {cert['created_at']}, "
        f"{cert['ledger_rows_removed']['count']} ledger rows removed, signed by {cert['server_key']}"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from nebula.server.exceptions import NebulaServerError
    from nebula.server.unlearning.executor import checkpoint_from_env
    from nebula.server.unlearning.service import ServeConfig, UnlearningServer

    config = ServeConfig(
        ledger=Path(args.ledger),
        operators=Path(args.operators),
        signing_key=Path(args.signing_key),
        tls_cert=Path(args.tls_cert),
        tls_key=Path(args.tls_key),
        host=args.host,
        port=args.port,
        store=Path(args.store) if args.store else None,
        certificates_dir=Path(args.certificates_dir) if args.certificates_dir else None,
        window_s=args.window,
    )
    try:
        server = UnlearningServer(config, checkpoint=checkpoint_from_env())
        port = server.start()
    except (ValueError, OSError, NebulaServerError) as exc:
        return _fail(str(exc), 2)
    print(f"unlearning service on {args.host}:{port} (ledger {args.ledger}, audience {server.audience})", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    import flwr.simulation  # noqa: F401  (importing flwr resets its logger: import first, then quieten)

    from nebula.cli._output import pct, quiet_libraries
    from nebula.common.config import ConfigError, overrides_from_args
    from nebula.common.presets import preset_config
    from nebula.server.unlearning import available_modes
    from nebula.simulation.unlearning_benchmark import UnlearningBenchmark, run_benchmark

    quiet_libraries(args.verbose)
    modes = tuple(m for m in args.modes.split(",") if m)
    unknown = [m for m in modes if m not in available_modes()]
    if unknown:
        return _fail(f"unknown mode(s) {unknown}; available: {', '.join(available_modes())}", 2)
    try:
        config = preset_config(args.preset, overrides_from_args(args))
        bench = UnlearningBenchmark(
            config=config,
            out=Path(args.out),
            client=args.client,
            modes=modes,
            workers=args.workers,
            correction_teacher_steps=args.correction_teacher_steps,
            correction_student_steps=args.correction_student_steps,
            repeat_retraining=args.repeat_retraining,
        )
        if bench.client and bench.client not in {f"client-{i}" for i in range(config.data.num_clients)}:
            raise ConfigError(
                f"--client {bench.client!r} is not one of client-0 .. client-{config.data.num_clients - 1}"
            )
    except (ConfigError, ValueError) as exc:
        return _fail(str(exc), 2)

    def progress(s: dict) -> None:
        print(
            f"      round {s['round']}: {s['accepted']} replies | teacher {pct(s['teacher_acc'])} | global student "
            f"{pct(s['student_acc'])} | {s['seconds']:.0f} s",
            flush=True,
        )

    result = run_benchmark(bench, on_round=progress, say=lambda line: print(line, flush=True))
    print("\n" + result.table + "\n")
    print(f"table: {bench.out / 'unlearning.md'}, figures: {bench.out / 'unlearning.json'}")
    return 0


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code
