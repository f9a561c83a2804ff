"""Hostile strings through config -> render -> the real verifiers (issue 13, items 5 and 6).

The property, for every config value that lands in a rendered file: either config validation (or
render, with one clear line) refuses the value, or
- `systemd-analyze verify` passes every unit without a word,
- every unit holds exactly the directives the same config renders for a benign value (nothing added,
  nothing swallowed by a line continuation), and the hostile value reads back intact,
- node runs the polkit rule, which still allows exactly the restarts it should,
- `systemd-sysusers --dry-run` reads the sysusers.d line as the user it names.

Hypothesis generates the strings (newlines, CR, NUL, `%`, quotes, `[Section]`, `=`, backslashes,
U+2028 ...). Examples per value: LLMCTL_PROPERTY_EXAMPLES (default 25); systemd-analyze costs
about 0.15 s a call, so the whole file stays within a minute.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llmctl.errors import ConfigError, UsageError
from llmctl.units.render import RenderOptions, render

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")

LLMCTL = str(Path(sys.executable).parent / "llmctl")  # verify checks that ExecStart's binary exists
CONFIG = "/etc/llmctl/config.yaml"
EXAMPLES = int(os.environ.get("LLMCTL_PROPERTY_EXAMPLES", "25"))

HOSTILE_TOKENS = [
    "\n",
    "\r",
    "\r\n",
    "\0",
    "\t",
    "\x0b",
    "\x0c",
    "\x1b[2J",
    "\x7f",
    "\x85",
    "\u2028",
    "\u2029",
    "\u202e",
    "%",
    "%n",
    "%%",
    "$",
    "${X}",
    '"',
    "'",
    "\\",
    "\\\\",
    "\\n",
    ";",
    " ; ",
    "#",
    "=",
    "[Service]",
    "[Unit]",
    "\nExecStartPre=+/bin/sh -c id",
    "ExecStartPre=+/bin/sh",
    " ",
    "-",
    "+",
    "@",
    ":",
    "/",
    "..",
    "é",
    "模型",
    "llmctl-health",
    "x.service",
    "8G",
    "1min",
]
hostile = st.lists(st.one_of(st.sampled_from(HOSTILE_TOKENS), st.text(max_size=4)), max_size=6).map("".join)


@dataclass(frozen=True)
class Field:
    """One config value that lands in a rendered file: how the config holds a value there."""

    name: str
    build: Callable[[str], dict]
    benign: str
    config_path: bool = False  # the value is the --config-path flag, not a config value


def _chat(**kw: Any) -> dict:
    return {"services": {"chat": {"model": "smoke", **kw}}}


FIELDS = [
    Field("services.chat.model (a path)", lambda v: {"services": {"chat": {"model": "/srv/" + v}}}, "m.gguf"),
    Field("services.chat.model (a name)", lambda v: {"services": {"chat": {"model": v}}}, "smoke"),
    Field("services.chat.api_keys_file", lambda v: _chat(api_keys_file="/etc/llmctl/" + v), "keys"),
    Field("services.chat.unit", lambda v: _chat(unit=v), "llm-chat"),
    Field("services.chat.memory_max", lambda v: _chat(memory_max=v), "8G"),
    Field(
        "models.m.file",
        lambda v: {"models": {"m": {"repo": "o/r", "file": v + ".gguf"}}, "services": {"chat": {"model": "m"}}},
        "m",
    ),
    Field(
        "models.m.path",
        lambda v: {"models": {"m": {"path": "/srv/" + v}}, "services": {"chat": {"model": "m"}}},
        "m.gguf",
    ),
    Field(
        "systemd.health_textfile", lambda v: {**_chat(), "systemd": {"health_textfile": f"/var/lib/{v}.prom"}}, "node"
    ),
    Field("systemd.server_user", lambda v: {**_chat(), "systemd": {"server_user": v}}, "llmctl"),
    Field("systemd.health_user", lambda v: {**_chat(), "systemd": {"health_user": v}}, "llmctl-health"),
    Field(
        "systemd.gpu_groups",
        lambda v: {"services": {"gpu": {"model": "smoke", "gpu": True}}, "systemd": {"gpu_groups": ["video", v]}},
        "render",
    ),
    Field("health.interval", lambda v: {**_chat(), "health": {"interval": v}}, "1min"),
    Field("--config-path", lambda v: _chat(), "config.yaml", config_path=True),
]


def _render(field: Field, value: str, home: Path):
    from llmctl.config import validate
    from llmctl.paths import Paths

    config = validate(field.build(value))
    config_path = CONFIG if not field.config_path else "/etc/llmctl/" + value
    paths = Paths("home", home, home, home / "state", home / "cache")
    return render(config, RenderOptions(llmctl=LLMCTL, config_path=config_path, paths=paths))


# -- a reader of unit files by systemd's rules -----------------------------------------------------------


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of every directive, as systemd's config parser reads the file: a line
    ends at \\n, \\r or NUL; `#` and `;` start comments; a line ending in an odd number of
    backslashes continues on the next."""
    out: list[tuple[str, str, str]] = []
    section = ""
    pending = ""
    for raw in re.split(r"\r\n|\n|\r|\0", text):
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif "=" in line:
            key, value = line.split("=", 1)
            out.append((section, key.strip(), value.strip()))
        else:
            out.append((section, "<no '='>", line))
    return out


def exec_args(value: str) -> list[str]:
    """An Exec*= command line split into its arguments (double quotes, backslash escapes), with the
    specifiers and variables unescaped (%% -> %, $$ -> $): what systemd would pass to execve."""
    args, i = [], 0
    while i < len(value):
        if value[i] == " ":
            i += 1
            continue
        word = ""
        if value[i] == '"':
            i += 1
            while value[i] != '"':
                if value[i] == "\\":
                    i += 1
                word += value[i]
                i += 1
            i += 1
        else:
            while i < len(value) and value[i] != " ":
                word += value[i]
                i += 1
            word = ";" if word == "\\;" else word
        args.append(word.replace("%%", "\0").replace("$$", "$").replace("\0", "%"))
    return args


def _verify(files, tmp: Path) -> subprocess.CompletedProcess:
    units = []
    for f in files:
        path = tmp / f.name
        path.write_text(f.content, encoding="utf-8")
        if f.kind in ("service", "timer"):
            units.append(str(path))
    return subprocess.run(
        ["systemd-analyze", "verify", *units],
        capture_output=True,
        text=True,
        env={"SYSTEMD_COLORS": "0", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )


def check_property(field: Field, value: str) -> str:
    """The property for one value; returns "refused" or "rendered"."""
    with tempfile.TemporaryDirectory() as d:
        home = Path(d) / "home"
        home.mkdir()
        try:
            result = _render(field, value, home)
        except (ConfigError, UsageError) as exc:  # refused, with one line that names what
            assert "\n" not in str(exc) and "\r" not in str(exc), str(exc)
            return "refused"
        benign = _render(field, field.benign, home)
        proc = _verify(result.files, Path(d))
        assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), (
            value,
            proc.stdout + proc.stderr,
        )
        for got, want in zip(result.files, benign.files):
            assert got.name == want.name or field.name.endswith(".unit")
            if got.kind not in ("service", "timer"):  # the polkit rule and sysusers line: tests below
                continue
            got_d, want_d = directives(got.content), directives(want.content)
            assert [(s, k) for s, k, _ in got_d] == [(s, k) for s, k, _ in want_d], (got.name, value)
            for section, key, v in got_d:
                if key.startswith("Exec"):
                    args = exec_args(v)
                    assert args[0] == LLMCTL and len(args) == len(
                        exec_args(dict(((s, k), x) for s, k, x in want_d)[(section, key)])
                    ), (value, v)
        _check_value_reads_back(field, value, result)
        _check_polkit(result)
        return "rendered"


def _check_polkit(result) -> None:
    """Whatever the value was (the config path is in the rule's header comment), node still runs
    the rule and it still allows exactly the restart of the servers by the health user."""
    from tests._node import polkit_decisions

    rules = result.get("50-llmctl-health.rules").content
    user = re.search(r"subject\.user == (\"[^\"]*\")", rules).group(1)
    units = [f.name for f in result.files if f.service is not None]
    cases = [[json.loads(user), "restart", u, None] for u in units] + [[json.loads(user), "stop", units[0], None]]
    assert polkit_decisions(rules, cases) == ["yes"] * len(units) + ["no"]


def _check_value_reads_back(field: Field, value: str, result) -> None:
    server = next(f for f in result.files if f.service is not None)
    found = dict(((s, k), v) for s, k, v in directives(server.content))
    if field.name == "services.chat.model (a path)":
        assert found[("Unit", "Description")].replace("%%", "%") == f"llmctl inference server 'chat' (/srv/{value})"
        assert exec_args(found[("Service", "ExecStart")])[-1] == str(PurePosixPath("/srv/" + value))
    if field.name == "services.chat.api_keys_file":
        assert found[("Service", "LoadCredential")].replace("%%", "%") == f"api-keys:/etc/llmctl/{value}"
    if field.name == "--config-path":
        assert exec_args(found[("Service", "ExecStart")])[3] == "/etc/llmctl/" + value


@pytest.mark.parametrize("field", FIELDS, ids=[f.name for f in FIELDS])
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(value=hostile)
def test_hostile_values_are_refused_or_rendered_inert(field: Field, value: str):
    event(check_property(field, value))  # --hypothesis-show-statistics: how many reached systemd-analyze


ISSUE_5 = "/srv/m.gguf\n[Service]\nExecStartPre=+/bin/sh -c 'id > /tmp/pwned'"


@pytest.mark.parametrize("field", FIELDS, ids=[f.name for f in FIELDS])
def test_the_issue_payload_and_benign_values(field: Field):
    """The payload of the issue is refused everywhere; each field's benign value renders and verifies
    (so the property above is not vacuous: it does reach systemd-analyze)."""
    assert check_property(field, ISSUE_5) == "refused"
    assert check_property(field, field.benign) == "rendered"


@pytest.mark.parametrize("value", ["50%", "a b", 'q"uote', "back\\slash", "[Service]=x", "é模型"])
def test_odd_but_valid_paths_render_inert(value: str):
    assert check_property(FIELDS[0], value) == "rendered"


def test_the_checks_catch_an_injection():
    """The oracle itself: a unit with a smuggled directive fails the directive comparison."""
    good = "[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n"
    bad = "[Unit]\nDescription=x\r[Service]\rExecStartPre=+/bin/sh\n[Service]\nExecStart=/bin/true\n"
    cont = "[Unit]\nDescription=x\\\nAfter=y\n[Service]\nExecStart=/bin/true\n"
    assert [k for _, k, _ in directives(bad)] != [k for _, k, _ in directives(good)]
    assert [k for _, k, _ in directives(cont)] == ["Description", "ExecStart"]
    assert exec_args('/x "a b" \\; "c\\"d" 100%%') == ["/x", "a b", ";", 'c"d', "100%"]


# -- polkit (node) and sysusers.d (systemd-sysusers) -----------------------------------------------------

names = st.lists(
    st.one_of(st.sampled_from(HOSTILE_TOKENS), st.text(alphabet="abc-_.:\\", max_size=4)), min_size=1, max_size=5
).map("".join)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(user=names, unit=names)
def test_polkit_rule_with_hostile_names_allows_exactly_the_listed_restarts(user: str, unit: str):
    from llmctl.config import validate
    from tests._node import polkit_decisions

    doc = {"services": {"chat": {"model": "smoke", "unit": unit}}, "systemd": {"health_user": user}}
    try:
        config = validate(doc)
        result = render(config, RenderOptions(llmctl=LLMCTL, config_path=CONFIG))
    except (ConfigError, UsageError):
        return
    rules = result.get("50-llmctl-health.rules").content
    unit_file = next(f.name for f in result.files if f.service == "chat")
    assert polkit_decisions(
        rules,
        [
            [user, "restart", unit_file, None],
            [user, "stop", unit_file, None],
            [user + "x", "restart", unit_file, None],
            [user, "restart", unit_file + "x", None],
            [user, "restart", "sshd.service", None],
        ],
    ) == ["yes", "no", "no", "no", "no"]


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="needs systemd-sysusers")
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(user=names)
def test_sysusers_line_is_read_as_the_user_it_names(user: str):
    """`systemd-sysusers --dry-run --root` parses the rendered line with systemd's own rules."""
    from llmctl.config import validate

    try:
        result = render(validate({"systemd": {"health_user": user}}), RenderOptions(llmctl=LLMCTL, config_path=CONFIG))
    except (ConfigError, UsageError):
        return
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "etc").mkdir()
        conf = Path(root) / "llmctl.conf"
        conf.write_text(result.get("llmctl.conf").content)
        proc = subprocess.run(
            ["systemd-sysusers", f"--root={root}", "--dry-run", str(conf)], capture_output=True, text=True, timeout=30
        )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert f"Creating user '{user}' (llmctl health check)" in out, out
    assert out.count("Creating user") == 1
