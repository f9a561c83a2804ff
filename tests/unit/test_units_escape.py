"""The escapers of llmctl.units.escape, one per rendered format (issue 13, items 5 and 6)."""

from __future__ import annotations

import json

import pytest

from llmctl.errors import UsageError
from llmctl.units.escape import Rendered, exec_line, js_value, quote_arg, sysusers_field, systemd_value, unit_path


@pytest.mark.parametrize("ch", ["\n", "\r", "\0", "\t", "\x1b", "\x85", "\u2028"])
def test_no_control_character_reaches_a_unit(ch: str):
    for escape in (lambda v: quote_arg(v), systemd_value, lambda v: unit_path("x", v), sysusers_field):
        with pytest.raises(UsageError, match="control character"):
            escape(f"/srv/a{ch}b")


def test_quote_arg_no_longer_passes_cr_or_nul():
    """Before: quote_arg('a\\rb') == '"a\\rb"' (a raw CR: a new line for systemd), and NUL the same."""
    for arg in ("a\rb", "a\0b"):
        with pytest.raises(UsageError):
            quote_arg(arg)


def test_exec_arguments():
    assert quote_arg("/usr/bin/llmctl") == "/usr/bin/llmctl"
    assert quote_arg('/srv/a "b" \\c') == '"/srv/a \\"b\\" \\\\c"'
    assert quote_arg("/srv/100%/$HOME") == '"/srv/100%%/$$HOME"'
    assert quote_arg(";") == "\\;"
    assert quote_arg("+/bin/sh", first=True) == '"+/bin/sh"'
    line = exec_line(["/x", "--model", "/srv/my model.gguf"])
    assert isinstance(line, Rendered) and line == '/x --model "/srv/my model.gguf"'


def test_systemd_values():
    assert systemd_value("50%") == "50%%"
    assert systemd_value("[Service] ExecStartPre=+/bin/sh") == "[Service] ExecStartPre=+/bin/sh"  # one line: inert
    assert systemd_value("a\\\\") == "a\\\\"  # an even run of backslashes is no continuation
    with pytest.raises(UsageError, match="line continuation"):
        systemd_value("/srv/model\\")


def test_unit_paths_are_bare_absolute_paths():
    assert unit_path("k", "/etc/llmctl/keys%1") == "/etc/llmctl/keys%1"  # the template's escaper doubles %
    for bad in ("relative", "/a b", '/a"b', "/a\\b", "/a;b", "/etc/llmctl//", "/a//b", "/a/./b", "/a/../b", "/"):
        with pytest.raises(UsageError, match="^k: "):
            unit_path("k", bad)


def test_js_values_are_json_and_ascii():
    for value in ['a"b', "a\\b", "a\u2028b", "</script>", ["x.service", 'y"'], "ü"]:
        text = js_value(value)
        assert json.loads(text) == value and text.isascii() and "\u2028" not in text


def test_sysusers_fields():
    assert sysusers_field("llmctl-health") == "llmctl-health"
    assert sysusers_field("llmctl health check") == '"llmctl health check"'
    assert sysusers_field('a "b" 100%') == '"a \\"b\\" 100%%"'
    for bad in ("-", ""):
        with pytest.raises(UsageError):
            sysusers_field(bad)
