"""YAML in and out of the Kubernetes templates, always through PyYAML's emitter.

The templates may print a value only through the `yaml` filter (an Environment `finalize` hook refuses
anything else), which emits it as one line of flow YAML with every string double-quoted and escaped by
the emitter. The rendered text is parsed back and emitted again with `yaml.safe_dump`, so the bytes that
leave llmctl come from the emitter, never from string concatenation. yaml and jinja2 are imported inside
the functions.
"""

from __future__ import annotations

import functools
import re
from typing import Any

# Strings that YAML 1.2 (and go-yaml v2, which kubectl uses) reads as something else although PyYAML's
# YAML 1.1 resolver emits them plain: y/n booleans, 0o octal, exponent floats without a dot; and, to be
# safe with every parser, a plain scalar that starts with ':' (an IPv6 CIDR such as ::/0). Quoted.
_AMBIGUOUS = re.compile(r":.*|[yYnN]|0o[0-7]+|[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?")


class YamlText(str):
    """Text the `yaml` filter produced: the only thing a template may print."""


@functools.lru_cache(maxsize=1)
def _dumpers():
    import yaml

    class Flow(yaml.SafeDumper):
        pass

    class Block(yaml.SafeDumper):
        pass

    def quoted(dumper, data: str):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style='"')

    def careful(dumper, data: str):
        # Multi-line text (the ConfigMap's config.yaml) as a literal block where the emitter allows one.
        style = "|" if "\n" in data else '"' if _AMBIGUOUS.fullmatch(data) else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    Flow.add_representer(str, quoted)
    Flow.add_representer(YamlText, quoted)
    Block.add_representer(str, careful)
    # A YAML anchor in a template (one securityContext for every container) is written out in full.
    Block.ignore_aliases = lambda self, data: True  # type: ignore[method-assign]
    return Flow, Block


def to_yaml(value: Any) -> YamlText:
    """One value as a single line of flow YAML (the templates' `yaml` filter)."""
    import jinja2
    import yaml

    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises UndefinedError naming the variable

    flow, _ = _dumpers()
    text = yaml.dump(
        value, Dumper=flow, default_flow_style=True, width=float("inf"), allow_unicode=False, sort_keys=False
    )
    text = text.removesuffix("\n").removesuffix("\n...")
    if "\n" in text:  # cannot happen with double-quoted strings and an infinite width
        raise ValueError(f"a value did not fit on one line: {value!r}")
    return YamlText(text)


def finalize(value: Any) -> Any:
    """Jinja's finalize hook: every {{ ... }} must be the yaml filter's output."""
    if not isinstance(value, YamlText):
        raise TypeError(f"template printed {value!r} without the yaml filter")
    return value


def dump_document(doc: dict) -> str:
    """One Kubernetes document as block YAML (ASCII only: every other character escaped)."""
    import yaml

    _, block = _dumpers()
    return yaml.dump(
        doc,
        Dumper=block,
        default_flow_style=False,
        sort_keys=False,
        allow_unicode=False,
        width=4096,
        explicit_start=True,
    )


def dump_config(data: dict) -> str:
    """The config file the pods read (the ConfigMap's config.yaml)."""
    import yaml

    _, block = _dumpers()
    return yaml.dump(data, Dumper=block, default_flow_style=False, sort_keys=False, allow_unicode=False, width=4096)


def load_document(text: str, template: str) -> dict:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml reads the same YAML, faster
    doc = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    if not isinstance(doc, dict) or not {"apiVersion", "kind", "metadata"} <= set(doc):
        raise ValueError(f"template {template} did not render one Kubernetes object")
    return doc
