"""Every command explains itself: each option has help, and a default written in the help as
`[default: ...]` reaches the terminal (rich markup used to swallow square brackets)."""

from __future__ import annotations

import re

import typer
from typer.testing import CliRunner

from vcache.cli.app import app


def _commands():
    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield path, cmd

    yield from walk(typer.main.get_command(app), [])


def test_every_option_has_help_and_its_written_default_is_shown():
    runner = CliRunner()
    seen = 0
    for path, cmd in _commands():
        missing = [p.name for p in cmd.params if p.param_type_name == "option" and not p.help]
        assert not missing, f"vcache {' '.join(path)}: options without help: {missing}"
        out = " ".join(runner.invoke(app, [*path, "--help"], terminal_width=200).output.split())
        for p in cmd.params:
            for written in re.findall(r"\[default: [^\]]+\]", p.help or ""):
                assert " ".join(written.split()) in out, f"vcache {' '.join(path)} --help lost {written}"
                seen += 1
    assert seen > 10  # the check did look at written defaults
