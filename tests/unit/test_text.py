"""llmctl.text: the one place for name patterns (fullmatch), control characters and printable text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmctl.text import PATTERNS, check_pattern, control_char, is_name, printable, printable_lines

REPO = Path(__file__).resolve().parents[2]

GOOD = {
    "name": "llama-1b",
    "user": "llmctl-health",
    "sha256": "a" * 64,
    "commit": "b" * 40,
    "size": "8G",
    "service_unit": "llmctl-chat.service",
    "timespan": "1min",
}


@pytest.mark.parametrize("kind", sorted(PATTERNS))
def test_every_pattern_refuses_a_trailing_newline(kind: str):
    """The bug class of issue 13 item 6: `re.match(r"^...$")` lets "evil\\n" through."""
    good = GOOD[kind]
    assert check_pattern(kind, good)
    for bad in (good + "\n", good + "\r", "\n" + good, good + "\0", good + "\x1b"):
        assert not check_pattern(kind, bad), (kind, bad)
    assert not check_pattern(kind, None) and not check_pattern(kind, 5)


def test_names():
    assert is_name("smoke") and is_name("a" * 64) and is_name("q4.k_m-1")
    for bad in ("evil\n", "Evil", "-x", ".x", "a" * 65, "", "a/b", "..", "a b"):
        assert not is_name(bad), bad


def test_no_regex_in_llmctl_is_anchored_with_dollar():
    """Names are checked with fullmatch; a pattern ending in `$` is the trap this issue fixed."""
    offenders = []
    for path in (REPO / "llmctl").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"""re\.(compile|match|search)\(\s*r?["'][^"']*\$["']""", line):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize(
    "ch", ["\0", "\n", "\r", "\t", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\u202e", "\ufeff", "\ud800"]
)
def test_control_characters(ch: str):
    assert control_char(f"a{ch}b") == ch
    shown = printable(f"a{ch}b")
    assert control_char(shown) is None and shown.startswith("a") and shown.endswith("b") and len(shown) > 3


def test_ordinary_text_is_left_alone():
    for text in ("plain", "日本語 モデル", "emoji 🦙", "quotes ' \" and % $ ; [Service] =", "back\\slash"):
        assert control_char(text) is None
        assert printable(text) == text


def test_printable_escapes_are_visible_and_lines_stay_lines():
    assert printable("red\x1b[31m\x07") == "red\\x1b[31m\\x07"
    assert printable("a\nb\r") == "a\\nb\\r"
    assert printable_lines("a\x1b\nb\n") == "a\\x1b\nb\n"
