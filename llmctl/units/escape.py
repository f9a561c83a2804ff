"""One escaper per format llmctl renders; the template environments apply them to every value.

Rendered files are read by other programs, often as root, so no value reaches a file unescaped:
each Jinja environment has a `finalize` hook that passes every `{{ value }}` through its format's
escaper. The only way around it is `Rendered`, a string already escaped for its format (an exec
line built by `exec_line`, the header llmctl writes itself).

- systemd units: no control characters (a newline, a carriage return or a NUL starts a new line,
  and so a new directive); `%` doubled (specifiers); no trailing backslash (a line continuation);
  command lines quoted by the rules of systemd.service(5) "Command lines" (`exec_line`).
- polkit rules (JavaScript): `json.dumps`, ASCII only, so no quote, backslash or line terminator
  (U+2028 included) can end a string or a comment.
- sysusers.d: whitespace-separated fields, double-quoted when needed with `\\` escapes; `%` doubled.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llmctl.errors import UsageError
from llmctl.text import control_char, describe_char, printable


class Rendered(str):
    """A string already escaped for the format it goes into: the template writes it as it is."""


def no_control(label: str, value: str, where: str = "a rendered file") -> str:
    """`value`, unless it holds a control character: then a UsageError naming `label`."""
    ch = control_char(value)
    if ch is not None:
        raise UsageError(
            f"{label}: {printable(repr(value))} contains a control character, {describe_char(ch)}: "
            f"not allowed in {where}"
        )
    return value


# -- systemd ---------------------------------------------------------------------------------------------


def systemd_value(value: Any, label: str = "a unit setting") -> str:
    """A value after `Key=` in a unit file."""
    text = str(value)
    no_control(label, text, "a unit file")
    if (len(text) - len(text.rstrip("\\"))) % 2 == 1:
        raise UsageError(f"{label}: {text!r} ends with a backslash, which systemd reads as a line continuation")
    return text.replace("%", "%%")


_SAFE_ARG = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


def quote_arg(arg: str, first: bool = False) -> str:
    """One argument of an Exec*= command line: quoted when needed; `%` and `$` escaped, `\\` and `"`
    escaped inside the quotes (systemd.service(5), "Command lines")."""
    no_control("a command-line argument", arg, "a unit file")
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg == ";":  # a lone ";" separates command lines
        return "\\;"
    if _SAFE_ARG.fullmatch(arg) and not (first and arg.startswith(("@", "-", ":", "+", "!"))):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_line(argv: list[str]) -> Rendered:
    return Rendered(" ".join(quote_arg(a, first=i == 0) for i, a in enumerate(argv)))


_PLAIN_PATH = re.compile(r"/[^\s\"'\\;]*")


def unit_path(label: str, value: str) -> str:
    """A path for a setting that takes a bare path (LoadCredential=, ReadWritePaths=): absolute and
    normalized (systemd ignores a path with '//', '.', '..' or a trailing '/' there), without white
    space, quotes, backslashes or control characters. Returned as it is: the template's escaper
    doubles '%'."""
    no_control(label, value, "a unit file")
    if not _PLAIN_PATH.fullmatch(value):
        raise UsageError(f"{label}: {value!r} must be an absolute path without spaces or quotes")
    if any(part in ("", ".", "..") for part in value.split("/")[1:]):
        raise UsageError(f"{label}: {value!r} must be a normalized absolute path (no '//', '.', '..' or trailing '/')")
    return value


def _systemd_finalize(value: Any) -> Any:
    return value if isinstance(value, Rendered) else systemd_value(value)


# -- polkit (JavaScript) ---------------------------------------------------------------------------------


def js_value(value: Any) -> str:
    """A JavaScript literal: JSON, ASCII only (U+2028 and U+2029 end a line in JavaScript)."""
    return json.dumps(value, ensure_ascii=True)


def _js_finalize(value: Any) -> Any:
    return value if isinstance(value, Rendered) else js_value(value)


# -- sysusers.d ------------------------------------------------------------------------------------------

_SYSUSERS_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


def sysusers_field(value: Any, label: str = "a sysusers.d field") -> str:
    """One field of a sysusers.d line (sysusers.d(5)): quoted when needed, specifiers escaped."""
    text = no_control(label, str(value), "a sysusers.d file")
    if text in ("", "-"):  # "-" (and nothing) mean "unset" there: no way to write them as text
        raise UsageError(f"{label}: {text!r} cannot be written as a sysusers.d field")
    text = text.replace("%", "%%")
    if _SYSUSERS_PLAIN.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _sysusers_finalize(value: Any) -> Any:
    return value if isinstance(value, Rendered) else sysusers_field(value)


FINALIZE = {"systemd": _systemd_finalize, "polkit": _js_finalize, "sysusers": _sysusers_finalize}
