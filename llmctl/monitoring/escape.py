"""One escaper per format that a rendered monitoring file contains. Every value from the config goes
through the escaper of the place it lands in, innermost first: a job name in a PromQL selector in a
rule file is PromQL-quoted, then the expression is YAML-quoted.

- YAML: yaml.safe_dump (strings always double-quoted, on one line); multi-line PromQL as a literal
  block only when the real parser reads the block back as the same text.
- JSON: json.dumps.
- PromQL string literals: Go's quoting rules (the PromQL lexer unquotes with strconv.Unquote); only
  printable characters stay raw, so the result is also safe inside a YAML block.
- PromQL regexes (=~): re.escape (RE2 reads an escaped punctuation character as itself), then quoted.
- Alert annotations are Go templates: a '{' from the config is written as {{ "{" }}, so no text from
  the config can open a template action.

yaml is imported inside the functions that use it.
"""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

from llmctl.errors import UsageError


def _text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{value!r} is not valid Unicode text (a lone surrogate)") from None
    return value


def _yaml_printable(ch: str) -> bool:
    """Characters that stay raw in PromQL strings: printable in YAML and no line break anywhere."""
    o = ord(ch)
    if 0x20 <= o <= 0x7E:
        return True
    return o >= 0xA0 and o not in (0x2028, 0x2029, 0xFEFF, 0xFFFE, 0xFFFF) and not 0xD800 <= o <= 0xDFFF


def promql_str(value: Any) -> str:
    """A PromQL double-quoted string literal (label values in selectors)."""
    out = ['"']
    for ch in _text(str(value)):
        if ch in '\\"':
            out.append("\\" + ch)
        elif _yaml_printable(ch):
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def promql_alternatives(values: list[str]) -> str:
    """A PromQL regex string literal matching exactly one of `values` (for =~): `"a|b\\.c"`."""
    return promql_str("|".join(re.escape(_text(v)) for v in values))


def promql_number(value: float | int) -> str:
    """A PromQL number literal for a finite threshold."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value != value
        or value in (float("inf"), float("-inf"))
    ):
        raise UsageError(f"{value!r} is not a finite number")
    return repr(value) if isinstance(value, float) else str(value)


def gotmpl_text(value: Any) -> str:
    """Literal text inside a Go template (an alert annotation): no '{' from the config stays raw."""
    return _text(str(value)).replace("{", '{{ "{" }}')


def yaml_value(value: Any, block: int | None = None) -> str:
    """A YAML scalar node for `value`, on one line (strings double-quoted).

    With `block=N`, a string that spans lines is written as a literal block scalar (`|-`) indented N
    spaces, when the YAML parser reads that block back as exactly the same text; otherwise, and for
    one-line strings, as a double-quoted scalar. Leading and trailing blank lines and the common
    indentation are removed first, so a template can write a multi-line expression indented; a
    trailing line break (a `filter` block in a template ends with one) is kept after the node."""
    import yaml

    if isinstance(value, (dict, list, tuple, set)):
        raise TypeError("yaml_value takes a scalar; write containers in the template")
    end = ""
    if isinstance(value, str):
        value = _text(value)
        if block is not None:
            end = "\n" if value.endswith("\n") else ""
            value = textwrap.dedent(value).strip("\n").rstrip()
            if "\n" in value:
                pad = " " * block
                literal = "|-\n" + "\n".join((pad + line) if line else "" for line in value.split("\n"))
                try:
                    if yaml.safe_load("k: " + literal) == {"k": value}:
                        return literal + end
                except yaml.YAMLError:
                    pass
        dumped = yaml.safe_dump(value, default_style='"', width=float("inf"), allow_unicode=True)
    else:
        dumped = yaml.safe_dump(value, width=float("inf"))
    return dumped.removesuffix("\n").removesuffix("\n...") + end


def json_value(value: Any) -> str:
    """A JSON value (strings quoted and escaped by json.dumps)."""
    if isinstance(value, str):
        _text(value)
    return json.dumps(value, ensure_ascii=False)
