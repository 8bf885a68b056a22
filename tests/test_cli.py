"""``regla.cli.main``: one error convention for every subcommand (messages, exit codes, --debug) and --help."""

from __future__ import annotations

from regla.cli import main
from regla.models import cli as models_cli


def test_help_and_usage(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "COMMAND" in out and all(c in out for c in ("models", "train", "eval", "plot", "bench", "export"))
    assert main([]) == 2  # no command: the help, on stderr, and exit 2
    assert "usage: regla" in capsys.readouterr().err
    assert main(["bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'bogus'" in err and "see `regla --help`" in err
    assert main(["export", "--help"]) == 0 and "--num-classes" in capsys.readouterr().out


def test_internal_errors_are_one_line_with_a_debug_hint(capsys, monkeypatch, patch):
    monkeypatch.delenv("REGLA_DEBUG", raising=False)
    def boom(args):
        raise KeyError("a bug")

    patch(models_cli, "run", boom)
    assert main(["models"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error: KeyError" in err[0] and "--debug" in err[0]
    for argv in (["--debug", "models"], ["models", "--debug"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback" in err and "a bug" in err
    monkeypatch.setenv("REGLA_DEBUG", "1")
    assert main(["models"]) == 1 and "Traceback" in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_130(capsys, patch):
    def interrupted(args):
        raise KeyboardInterrupt

    patch(models_cli, "run", interrupted)
    assert main(["models"]) == 130
    assert capsys.readouterr().err.strip() == "regla models: interrupted"


def test_regla_errors_keep_their_exit_code(capsys, patch):
    from regla.errors import RunFailure, Stopped

    for exc, code, head in ((RunFailure("disk\nfull\nthird line"), 1, "regla models: error: "),
                            (Stopped("stopped by SIGTERM", 143), 143, "regla models: stopped by SIGTERM")):
        patch(models_cli, "run", lambda args, exc=exc: (_ for _ in ()).throw(exc))
        assert main(["models"]) == code
        err = capsys.readouterr().err
        assert err.startswith(head) and err.count("\n") <= 2 and "third" not in err

