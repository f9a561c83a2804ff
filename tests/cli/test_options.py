"""Shared options are declared once (llmctl/cli/_common.py) and mean the same thing in every command:
--json, --quiet/-q, --output-dir, --api-key; -o is an output format (bench) and nothing else."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from llmctl.cli import _common
from llmctl.cli.app import app

runner = CliRunner()
NO_RESULT = {("serve",)}  # runs a server: prints no result


def _commands(group=None, path=()):
    group = group or typer.main.get_command(app)
    for name, cmd in sorted(getattr(group, "commands", {}).items()):
        if getattr(cmd, "hidden", False):
            continue
        if getattr(cmd, "commands", None):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def _help_of(annotated) -> tuple[tuple[str, ...], str | None, bool]:
    info = annotated.__metadata__[0]  # in Annotated, Typer keeps the first declaration as `default`
    decls = tuple(d for d in (info.default, *info.param_decls) if isinstance(d, str) and d.startswith("-"))
    return decls, info.help, bool(info.hidden)


COMMANDS = list(_commands())


def test_the_walk_sees_every_command():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {
        "health",
        "usage",
        "config show",
        "config check",
        "models pull",
        "models show",
        "systemd render",
        "monitoring render",
        "k8s render",
        "bench",
        "serve",
    } <= names


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_shared_options_have_one_declaration(path, cmd):
    json_decls, json_help, _ = _help_of(_common.JsonOpt)
    quiet_decls, quiet_help, _ = _help_of(_common.QuietOpt)
    dir_decls, dir_help, _ = _help_of(_common.OutputDirOpt)
    key_decls, key_help, _ = _help_of(_common.ApiKeyOpt)
    seen = set()
    for param in cmd.params:
        opts = set(param.opts) | set(param.secondary_opts)
        if "--json" in opts:
            assert (opts, param.help, param.name) == ({"--json"}, json_help, "json_out")
        if opts & {"--quiet", "-q"}:
            assert (opts, param.help) == (set(quiet_decls), quiet_help)
        if "--output-dir" in opts:
            assert (opts, param.help, param.name) == (set(dir_decls), dir_help, "output_dir")
        if "--api-key" in opts:
            assert (opts, param.help, param.envvar) == (set(key_decls), key_help, "OPENAI_API_KEY")
        if "-o" in opts:  # an output format, declared once; or, where there is none, the hidden refusal
            if param.hidden:
                assert not param.expose_value, param
            else:
                assert (opts, param.metavar, param.name) == (set(_common.OUTPUT_FORMAT_DECLS), "FORMAT", "output")
        seen |= opts
    if path not in NO_RESULT:
        assert "--json" in seen, f"{' '.join(path)} prints a result: it takes --json"


@pytest.mark.parametrize("argv", [["systemd", "render"], ["monitoring", "render"], ["k8s", "render"]])
def test_o_for_a_directory_is_refused_with_the_new_spelling(argv, tmp_path):
    result = runner.invoke(app, [*argv, "-o", str(tmp_path / "out")], catch_exceptions=False)
    assert result.exit_code == 2
    assert "--output-dir DIR" in result.output
    assert not (tmp_path / "out").exists()


def test_json_is_printed_under_quiet(tmp_path, write_config):
    write_config("services:\n  chat: {model: smoke}\n")
    result = runner.invoke(
        app, ["config", "check", "--json", "--quiet", str(tmp_path.parent / "none.yaml")], catch_exceptions=False
    )
    assert result.exit_code == 2  # the file does not exist
    good = tmp_path / "good.yaml"
    good.write_text("services:\n  chat: {model: smoke}\n")
    result = runner.invoke(app, ["config", "check", "--json", "--quiet", str(good)], catch_exceptions=False)
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["kind"] == "config.check" and doc["ok"] is True and doc["services"] == ["chat"]
    quiet = runner.invoke(app, ["config", "check", "--quiet", str(good)], catch_exceptions=False)
    assert quiet.exit_code == 0 and quiet.output == ""
