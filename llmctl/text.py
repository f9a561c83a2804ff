"""Names and text: the one place for name patterns, control characters, and text that is safe to print.

- Names are checked with `re.fullmatch` only: Python's `$` matches before a trailing newline, so a
  pattern anchored with `^` and `$` passes "evil\\n". Every name check in llmctl calls `is_name` (or
  `check_pattern` for the other patterns here).
- Control characters (C0, DEL, C1, Unicode line and paragraph separators, format characters and
  lone surrogates) are refused in every config value and every value rendered into a file another
  program reads: `control_char` finds the first one.
- Whatever llmctl prints that came from outside (a GGUF header, a server's error text, a lockfile)
  goes through `printable`, which shows control characters as visible escapes.

Standard library only: the CLI, the schema and the store all import this.
"""

from __future__ import annotations

import re
import unicodedata

# -- name patterns (use with fullmatch only) ----------------------------------------------------------

PATTERNS: dict[str, re.Pattern[str]] = {
    # a model, service or upstream name: also a directory name in the store
    "name": re.compile(r"[a-z0-9][a-z0-9._-]{0,63}"),
    # a POSIX user or group name as systemd and shadow-utils accept it without complaint
    "user": re.compile(r"[a-z_][a-z0-9_-]{0,30}"),
    "sha256": re.compile(r"[0-9a-f]{64}"),
    "commit": re.compile(r"[0-9a-f]{40}"),  # a git SHA-1: a commit (or a blob in the HF cache)
    # a systemd size: MemoryMax=512M, 8G, 1.5G (groups: the number, the unit)
    "size": re.compile(r"([0-9]+(?:\.[0-9]+)?)([KMGT]?)"),
    # a systemd unit name with the .service suffix: the characters unit_name_is_valid() allows but
    # ':', which `systemd-analyze verify` cannot take in a file name
    "service_unit": re.compile(r"[A-Za-z0-9_.\\-]+\.service"),
    # a systemd time span: 1min, 30s, 1h 30min
    "timespan": re.compile(r"(?:[0-9]+(?:\.[0-9]+)? *(?:[a-z]+)? *)+"),
}

NAME_RULE = "lower-case letters, digits, '.', '_' or '-' (at most 64)"
USER_RULE = "lower-case letters, digits, '_' or '-' (at most 31)"


def check_pattern(kind: str, value: object) -> bool:
    """True when `value` is a str that matches PATTERNS[kind] as a whole (re.fullmatch)."""
    return isinstance(value, str) and PATTERNS[kind].fullmatch(value) is not None


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size_bytes(value: str) -> int | None:
    """A systemd size (PATTERNS["size"]: 512M, 8G, 1.5G; K, M, G, T are powers of 1024) in bytes,
    or None when `value` is not one."""
    m = PATTERNS["size"].fullmatch(value) if isinstance(value, str) else None
    if m is None:
        return None
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


def is_name(value: object) -> bool:
    """A model, service or upstream name: [a-z0-9][a-z0-9._-]{0,63}, the whole string."""
    return check_pattern("name", value)


# -- control characters --------------------------------------------------------------------------------

# Cc: C0 controls, DEL, C1 controls (NEL U+0085 among them); Cf: format characters (bidi overrides,
# zero-width characters, BOM); Zl, Zp: U+2028, U+2029, line terminators in JavaScript; Cs: lone
# surrogates (not encodable as UTF-8).
_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def is_control(ch: str) -> bool:
    return unicodedata.category(ch) in _CONTROL_CATEGORIES


def control_char(text: str) -> str | None:
    """The first control character in `text`, or None."""
    if text.isascii():  # the common case, fast: only C0 and DEL are control characters in ASCII
        for ch in text:
            if ch < " " or ch == "\x7f":
                return ch
        return None
    for ch in text:
        if is_control(ch):
            return ch
    return None


def describe_char(ch: str) -> str:
    """U+000A (LINE FEED): how error messages name a character."""
    name = unicodedata.name(ch, "")
    if not name and ch in _C0_NAMES:
        name = _C0_NAMES[ch]
    return f"U+{ord(ch):04X}" + (f" ({name})" if name else "")


_C0_NAMES = {
    "\0": "NUL",
    "\t": "TAB",
    "\n": "LINE FEED",
    "\r": "CARRIAGE RETURN",
    "\x1b": "ESCAPE",
    "\x7f": "DELETE",
    "\x85": "NEXT LINE",
}


# -- printing ------------------------------------------------------------------------------------------


def printable(text: object) -> str:
    """`text` as one line that is safe on a terminal and in a monitoring system's output: every
    control character (see above) becomes a visible escape: \\x1b, \\n, \\u2028."""
    s = str(text)
    if control_char(s) is None:
        return s
    return "".join(_escape(ch) if is_control(ch) else ch for ch in s)


def _escape(ch: str) -> str:
    special = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if ch in special:
        return special[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable_lines(text: str) -> str:
    """`printable` for each line of a multi-line text (a report): its newlines stay newlines."""
    return "\n".join(printable(line) for line in text.split("\n"))
