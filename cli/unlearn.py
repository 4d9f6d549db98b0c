"""``nebula unlearn``: the operator's commands and the service's own.

    nebula unlearn CLIENT --reason TEXT --mode purge|reaggregate|exact-replay|fast-correction
        --server HOST:PORT --ca CA.pem --key OPERATOR.key [--server-key SERVER-SIGNING.pub]
    nebula unlearn status ID ...      nebula unlearn list ...
    nebula unlearn verify CERT.json --server-key SERVER-SIGNING.pub
    nebula unlearn serve --ledger runs/latest/ledger.sqlite --operators DIR --signing-key KEY
        --tls-cert PEM --tls-key KEY
    nebula unlearn benchmark [--preset benchmark] [--client client-3] [--out runs/unlearn-benchmark]
    nebula unlearn shard CLIENT [--run runs/latest]     (a simulated ``--isolation sharded:S`` run)

``nebula unlearn CLIENT`` is ``nebula unlearn submit CLIENT`` (:class:`UnlearnGroup`) unless CLIENT is a
subcommand's name or close to one (``nebula unlearn lst`` is a typo, answered with a suggestion): such a
client is submitted with the explicit ``submit``. The operator commands sign every call for one deployment:
the one whose signing public key ``--server-key`` names (default: ``server-signing.pub`` next to the ``--ca``
file, as ``nebula certs`` lays them out). Exit codes: 0 done, 1 a request failed, a certificate does not
verify or the service is unreachable, 2 bad input (arguments, files, or a call the service refused as
malformed, unknown or unauthorised).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from nebula.cli._args import CommaList, ConfigOptions, Preset, Verbose, command, with_flags
from nebula.cli._output import fail, pct, print_tables, quiet_libraries, round_line, say
from nebula.server.unlearning import available_modes
from nebula.server.unlearning.fast_correction import CorrectionBudget
from nebula.server.unlearning.registry import mode_summaries
from nebula.server.unlearning.requests import STATUSES

REFUSED = ("INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "UNAUTHENTICATED")


class UnlearnGroup(TyperGroup):
    """``nebula unlearn``: a first word that is no subcommand, nor close to one, is the client of ``submit``."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        word = args[0] if args else ""
        if word and not word.startswith("-") and word not in self.commands:
            if not get_close_matches(word, self.commands):
                return "submit", self.commands["submit"], args
        return click.Group.resolve_command(self, ctx, args)  # click's message suggests (TyperGroup's repeats it)


app = typer.Typer()
unlearn = typer.Typer(
    cls=UnlearnGroup,
    no_args_is_help=True,
    help="Forget a client on an operator's request (gRPC over TLS, signed requests), and check certificates. "
    "`nebula unlearn CLIENT ...` is `nebula unlearn submit CLIENT ...`.",
)
app.add_typer(unlearn, name="unlearn")

# -- operator commands -------------------------------------------------------------------------
Server = Annotated[str, typer.Option(metavar="HOST:PORT", help="address of the unlearning service")]
Ca = Annotated[str, typer.Option(metavar="CA.pem", help="CA certificate that issued the service's TLS certificate")]
Key = Annotated[
    str, typer.Option(metavar="OPERATOR.key", help="your Ed25519 private key (PEM); the service must trust its key")
]
ServerKey = Annotated[
    str | None,
    typer.Option(
        metavar="PATH",
        help="the service's Ed25519 signing public key (PEM, server-signing.pub from `nebula certs`): calls are "
        "signed for that deployment only, and another service refuses them (default: server-signing.pub next to "
        "the --ca file, if it exists)",
    ),
]
Timeout = Annotated[float, typer.Option(help="seconds per call")]
Out = Annotated[str | None, typer.Option(metavar="CERT.json", help="write the signed certificate here")]
Json = Annotated[bool, typer.Option("--json", help="print JSON")]


@dataclass(frozen=True)
class Operator:
    """The options every command that calls the service takes."""

    server: str
    ca: str
    key: str
    server_key: str | None
    timeout: float

    def call(self, run: Callable[[Any], int]) -> int:
        """Open the client, ``run(api)``, turn refusals and bad files into messages and exit codes."""
        from nebula.server.unlearning.client import OperatorCallError

        try:
            with self._client() as api:
                return run(api)
        except ValueError as exc:  # unreadable key, CA or server key file; no server key
            return fail(str(exc), 2)
        except OperatorCallError as exc:
            return fail(str(exc), 2 if exc.code.name in REFUSED else 1)

    def _client(self):
        from nebula.server.unlearning.client import SERVER_KEY_NAME, OperatorClient, server_key_beside

        server_key = self.server_key or server_key_beside(self.ca)
        if server_key is None:
            raise ValueError(
                f"--server-key PATH is needed: the service's signing public key ({SERVER_KEY_NAME} from "
                f"`nebula certs`), which names the deployment the calls are signed for; there is no "
                f"{SERVER_KEY_NAME} next to the --ca file {self.ca}"
            )
        return OperatorClient(self.server, ca=self.ca, key=self.key, server_key=server_key, timeout_s=self.timeout)


@command(
    unlearn,
    "submit",
    "Submit an unlearn request (stored durably before it is acknowledged; idempotent per --request-key).",
)
def submit(
    client: Annotated[
        str, typer.Argument(metavar="CLIENT", help="id of the client to forget (as in the ledger, e.g. client-3)")
    ],
    reason: Annotated[str, typer.Option(help="why (kept in the request and the certificate)")],
    mode: Annotated[
        str,
        typer.Option(
            click_type=click.Choice(available_modes()),
            help="; ".join(f"{name}: {text}" for name, text in mode_summaries().items()),
        ),
    ],
    server: Server,
    ca: Ca,
    key: Key,
    server_key: ServerKey = None,
    timeout: Timeout = 10.0,
    request_key: Annotated[
        str | None,
        typer.Option(
            metavar="K",
            help="idempotency key: submitting again with the same key and content gives the same request id "
            "(default: a new random key)",
        ),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="poll until the request is done or failed")] = False,
    wait_timeout: Annotated[float, typer.Option(help="seconds --wait polls at most")] = 300.0,
    out: Annotated[
        str | None, typer.Option(metavar="CERT.json", help="with --wait: write the signed certificate here")
    ] = None,
) -> int:
    if out and not wait:
        return fail("--out needs --wait (the certificate exists once the request is done)", 2)

    def run(api) -> int:
        request = request_key or uuid.uuid4().hex
        reply = api.submit(client, reason=reason, mode=mode, idempotency_key=request)
        again = "" if reply.created else " (already submitted with this key)"
        say(f"request {reply.request_id} {reply.status}{again} (request key {request})")
        if not wait:
            return 0
        deadline = time.monotonic() + wait_timeout
        status = api.status(reply.request_id)
        while status.status in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.2)
            status = api.status(reply.request_id)
        return _report(status, out=out)

    return Operator(server, ca, key, server_key, timeout).call(run)


@command(unlearn, "status", "Show one request: status, error, attempts; --out writes its certificate once done.")
def status(
    request_id: Annotated[str, typer.Argument(metavar="ID")],
    server: Server,
    ca: Ca,
    key: Key,
    server_key: ServerKey = None,
    timeout: Timeout = 10.0,
    out: Annotated[
        str | None,
        typer.Option(metavar="CERT.json", help="write the signed certificate here (request must be done)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the status as JSON")] = False,
) -> int:
    def run(api) -> int:
        found = api.status(request_id)
        if as_json:
            print(json.dumps(_as_dict(found), indent=2))
            return 0 if found.status != "failed" else 1
        return _report(found, out=out)

    return Operator(server, ca, key, server_key, timeout).call(run)


@command(unlearn, "list", "List requests, newest first.")
def list_requests(
    server: Server,
    ca: Ca,
    key: Key,
    server_key: ServerKey = None,
    timeout: Timeout = 10.0,
    status: Annotated[
        str | None, typer.Option(click_type=click.Choice(STATUSES), help="only requests with this status")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="at most this many")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines")] = False,
) -> int:
    def run(api) -> int:
        requests = api.list(status=status or "", limit=limit)
        for r in requests:
            if as_json:
                print(json.dumps({k: v for k, v in _as_dict(r).items() if k != "certificate_json"}))
            else:
                say(f"{r.request_id}  {r.status:7s}  {r.mode:11s}  {r.client_id}  {r.created_at}  {r.reason}")
        if not as_json:
            say(f"{len(requests)} request(s)")
        return 0

    return Operator(server, ca, key, server_key, timeout).call(run)


def _report(status, *, out: str | None) -> int:
    print(
        f"request {status.request_id}: {status.status} "
        f"({status.mode} client {status.client_id}, attempts {status.attempts})"
    )
    if status.status == "failed":
        return fail(f"request {status.request_id} failed: {status.error}", 1)
    if status.status != "done":
        if out:
            return fail(f"request {status.request_id} is {status.status}: no certificate yet", 1)
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
@command(unlearn, "verify", "Check a certificate's signature against the server's public key (no network needed).")
def verify(
    certificate: Annotated[str, typer.Argument(metavar="CERT", help="certificate JSON file")],
    server_key: Annotated[str, typer.Option(metavar="PUB.pem", help="the server's Ed25519 public key (PEM)")],
) -> int:
    from nebula.server.exceptions import CertificateError, MalformedCertificate
    from nebula.server.unlearning.certificate import verify_certificate

    if not Path(certificate).is_file():
        return fail(f"{certificate}: no such file", 2)
    try:
        cert = verify_certificate(certificate, server_key)
    except CertificateError as exc:
        return fail(f"certificate does not verify: {exc}", 2 if isinstance(exc, MalformedCertificate) else 1)
    say(
        f"valid: request {cert['request_id']}, {cert['mode']} of client {cert['client_id']} at {cert['created_at']}, "
        f"{cert['ledger_rows_removed']['count']} ledger rows removed, signed by {cert['server_key']}"
    )
    return 0


@command(
    unlearn,
    "serve",
    "Run the unlearning service on a ledger; it carries out requests at once (no live run). "
    "Stop with Ctrl-C; unfinished requests resume at the next start.",
)
def serve(
    ledger: Annotated[Path, typer.Option(help="the federation's ledger.sqlite")],
    operators: Annotated[
        Path,
        typer.Option(metavar="DIR", help="trusted operators' Ed25519 public keys: folder of *.pem/*.pub, or one file"),
    ],
    signing_key: Annotated[
        Path, typer.Option(metavar="KEY", help="the server's Ed25519 private key (PEM): signs certificates")
    ],
    tls_cert: Annotated[
        Path, typer.Option(metavar="PEM", help="the service's TLS certificate, issued by the operators' CA")
    ],
    tls_key: Annotated[Path, typer.Option(metavar="KEY", help="its private key")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port (0: any free port, printed at start)")] = 50061,
    store: Annotated[Path | None, typer.Option(help="request store (default: tables in the ledger file)")] = None,
    certificates_dir: Annotated[
        Path | None, typer.Option(help="copies of certificates (default: <ledger folder>/certificates)")
    ] = None,
    window: Annotated[float, typer.Option(help="seconds a signed call's timestamp may differ from this clock")] = 300.0,
) -> int:
    from nebula.server.exceptions import NebulaServerError
    from nebula.server.unlearning.executor import checkpoint_from_env
    from nebula.server.unlearning.service import ServeConfig, UnlearningServer

    config = ServeConfig(
        ledger=ledger, operators=operators, signing_key=signing_key, tls_cert=tls_cert, tls_key=tls_key,
        host=host, port=port, store=store, certificates_dir=certificates_dir, window_s=window,
    )  # fmt: skip
    try:
        server = UnlearningServer(config, checkpoint=checkpoint_from_env())
        bound = server.start()
    except (ValueError, OSError, NebulaServerError) as exc:
        return fail(str(exc), 2)
    say(f"unlearning service on {host}:{bound} (ledger {ledger}, audience {server.audience})")
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


# -- sharded runs ------------------------------------------------------------------------------
@command(
    unlearn,
    "shard",
    "Forget a client of a simulated `--isolation sharded:S` run: its shard trains again from scratch without it "
    "(its other clients answer again), the global student is distilled again from the shard teachers, and "
    "RUN/shards.json points at the new models last. Exact by construction: the result equals a sharded run from "
    "scratch without the client. The cost and that statement go to RUN/unlearning/CLIENT/forget.json.",
)
def shard(
    client: Annotated[str, typer.Argument(metavar="CLIENT", help="id of the client to forget, e.g. client-3")],
    run: Annotated[Path, typer.Option(help="folder of the sharded run (its shards.json)")] = Path("runs/latest"),
    parallel: Annotated[
        int | None, typer.Option(min=1, help="nodes simulated at the same time (Ray actors; default: one per CPU core)")
    ] = None,
    verbose: Verbose = False,
) -> int:
    from nebula.simulation.sharded import Manifest

    try:
        manifest = Manifest.read(run)
    except ValueError as exc:
        return fail(f"{exc}; `nebula unlearn shard` forgets from a run made with --isolation sharded:S", 2)
    if client in manifest.forgotten:
        say(f"{client} was already forgotten from {run}: {run / 'unlearning' / client / 'forget.json'}")
        return 0
    import flwr.simulation  # noqa: F401  (importing flwr resets its logger: import first, then quieten)

    from nebula.simulation.sharded import forget

    quiet_libraries(verbose)
    say(f"forgetting {client} from {run} ({manifest.level}): its shard trains again without it")

    rounds = int(manifest.config.get("federation.rounds", 0))

    def progress(shard_index: int, s: dict) -> None:
        say(f"      [shard-{shard_index}] " + round_line(s, rounds))

    try:
        cost = forget(run, client, on_round=progress, workers=parallel)
    except ValueError as exc:
        return fail(str(exc), 2)
    full = cost["full_retrain"]
    say(
        f"{client} forgotten (exact: {cost['exact']}): shard {cost['shard']} retrained with "
        f"{len(cost['shard_clients'])} clients, {cost['client_rounds']} client-rounds and {cost['seconds']:.0f} s, "
        f"against {full['client_rounds']} client-rounds and {full['seconds']:.0f} s to retrain every shard; "
        f"global student {pct(cost['global_student'].get('student_acc'))}"
    )
    say(f"record: {run / 'unlearning' / client / 'forget.json'}")
    return 0


# -- benchmark ---------------------------------------------------------------------------------
BENCHMARK = (
    "Simulate a federation, forget one client with each mode, retrain without it, and print the verification "
    "table (accuracy on the forgotten client's data, the others' data and the test set, membership-inference "
    "AUC, seconds against retraining). Writes OUT/unlearning.md and OUT/unlearning.json."
)
Modes = Annotated[
    Any, typer.Option(click_type=CommaList(available_modes(), "mode"), help="comma list of modes (default: all)")
]


@command(
    unlearn,
    "benchmark",
    BENCHMARK,
    config=ConfigOptions(preset="benchmark", exclude=frozenset({"federation.output_dir"})),  # OUT holds the runs
)
def benchmark(
    preset: Preset = "benchmark",
    client: Annotated[
        str, typer.Option(help="client id to forget (default: the client with the most private training examples)")
    ] = "",
    modes: Modes = "",
    out: Annotated[Path, typer.Option(help="folder for the runs, their copies and the table")] = Path(
        "runs/unlearn-benchmark"
    ),
    correction_teacher_steps: Annotated[
        int, typer.Option(min=1, help="fast-correction budget: teacher optimizer steps")
    ] = CorrectionBudget.teacher_steps,
    correction_student_steps: Annotated[
        int, typer.Option(min=1, help="fast-correction budget: student optimizer steps")
    ] = CorrectionBudget.student_steps,
    repeat_retraining: Annotated[
        bool,
        typer.Option(
            "--repeat-retraining",
            help="retrain a second time with the same configuration (row 'retrained-again'): retraining's own "
            "run-to-run spread, the floor under which a mode's gap means nothing",
        ),
    ] = False,
    parallel: Annotated[
        int | None, typer.Option(min=1, help="nodes simulated at the same time (Ray actors; default: one per CPU core)")
    ] = None,
    verbose: Verbose = False,
    *,
    overrides: dict,
) -> int:
    from nebula.common.config import ConfigError
    from nebula.common.presets import preset_config
    from nebula.simulation.unlearning_benchmark import UnlearningBenchmark

    try:
        config = preset_config(preset, overrides)
        bench = UnlearningBenchmark(
            config=config, out=out, client=client, modes=modes, workers=parallel,
            correction_teacher_steps=correction_teacher_steps, correction_student_steps=correction_student_steps,
            repeat_retraining=repeat_retraining,
        )  # fmt: skip
        if bench.client and bench.client not in {f"client-{i}" for i in range(config.data.num_clients)}:
            raise ConfigError(
                f"--client {bench.client!r} is not one of client-0 .. client-{config.data.num_clients - 1}"
            )
    except (ConfigError, ValueError) as exc:
        return fail(with_flags(str(exc)), 2)
    return _run_benchmark(bench, verbose)


def _run_benchmark(bench, verbose: bool) -> int:
    """Run the checked benchmark (Flower and torch load here), print its table."""
    import flwr.simulation  # noqa: F401  (importing flwr resets its logger: import first, then quieten)

    from nebula.simulation.unlearning_benchmark import run_benchmark

    quiet_libraries(verbose)

    def progress(s: dict) -> None:
        say(
            f"      round {s['round']}: {s['accepted']} replies | teacher {pct(s['teacher_acc'])} | global student "
            f"{pct(s['student_acc'])} | {s['seconds']:.0f} s"
        )

    result = run_benchmark(bench, on_round=progress, say=say)
    say("")
    print_tables(result.table + "\n")
    say(f"table: {bench.out / 'unlearning.md'}, figures: {bench.out / 'unlearning.json'}")
    return 0
