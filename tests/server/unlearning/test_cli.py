"""``nebula unlearn``: help, and exit code 2 on bad input (no service needed). Which subcommand a first word
runs (``nebula unlearn CLIENT``, typos): tests/cli/test_unlearn.py."""

import pytest

from nebula.cli.main import main

SUBCOMMANDS = ("submit", "status", "list", "verify", "serve", "benchmark")


@pytest.mark.parametrize("words", [[], *[[s] for s in SUBCOMMANDS], ["client-3"]])
def test_every_command_has_help(words, capsys):
    with pytest.raises(SystemExit) as done:
        main(["unlearn", *words, "--help"])
    assert done.value.code == 0
    assert "Usage: nebula unlearn" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["unlearn"],  # no subcommand
        ["unlearn", "client-3", "--mode", "purge"],  # no --reason, --server ...
        ["unlearn", "list", "--server", "h:1", "--ca", "c", "--key", "k", "--status", "nope"],
    ],
)
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2


def test_bad_files_exit_2(material, tmp_path, capsys):
    ops = ["--server", "127.0.0.1:1", "--ca", str(material.ca_cert)]
    assert main(["unlearn", "list", *ops, "--key", str(tmp_path / "none.key")]) == 2
    assert "none.key" in capsys.readouterr().err
    assert (
        main(
            [
                "unlearn",
                "list",
                "--server",
                "h:1",
                "--ca",
                str(tmp_path / "none.pem"),
                "--key",
                str(material.operator_key),
            ]
        )
        == 2
    )
    assert "none.pem" in capsys.readouterr().err
    assert (
        main(
            [
                "unlearn",
                "client-1",
                "--reason",
                "r",
                "--mode",
                "purge",
                "--out",
                "c.json",
                *ops,
                "--key",
                str(material.operator_key),
            ]
        )
        == 2
    )
    assert "--out needs --wait" in capsys.readouterr().err
    serve = [
        "unlearn",
        "serve",
        "--ledger",
        str(tmp_path / "none.sqlite"),
        *material.serve_args(),
    ]
    assert main(serve) == 2
    assert "none.sqlite does not exist" in capsys.readouterr().err


def test_no_server_key_exits_2_naming_the_option(material, tmp_path, capsys):
    """Operator calls are signed for one deployment: without --server-key and no server-signing.pub next to
    the CA, the command says which option it needs (and never calls the service)."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(material.ca_cert.read_bytes())  # a CA alone in its folder
    ops = ["--server", "127.0.0.1:1", "--ca", str(ca), "--key", str(material.operator_key)]
    assert main(["unlearn", "list", *ops]) == 2
    err = capsys.readouterr().err
    assert "--server-key PATH is needed" in err and str(ca) in err
    assert main(["unlearn", "status", "x", *ops, "--server-key", str(tmp_path / "none.pub")]) == 2
    assert "none.pub" in capsys.readouterr().err
    assert main(["unlearn", "list", *ops, "--server-key", str(material.signing_pub), "--timeout", "1"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err  # with a server key it got as far as the network
