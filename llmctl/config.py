"""One loader: YAML file -> validated, frozen config objects.

Where the file comes from: --config, else LLMCTL_CONFIG, else $LLMCTL_HOME/config.yaml, else the
user's XDG config (or /etc/llmctl/config.yaml in system mode). A default location that does not
exist means "all defaults"; a file the caller named that does not exist is an error.

Per value: flag > LLMCTL_* environment > file > default. Environment overrides name the key path
with double underscores: LLMCTL_SERVICES__CHAT__PORT=8001, LLMCTL_HEALTH__TIMEOUT_S=5. Values are
parsed as YAML scalars ("8001" is a number, "true" a boolean).

Unknown keys are errors. Every error names the key path (`services.chat.port: ...`).

pydantic and yaml are imported inside the functions that need them: `llmctl --help` imports neither.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmctl.errors import ConfigError
from llmctl.paths import Paths, resolve_paths

if TYPE_CHECKING:
    from llmctl.schema import Config

# LLMCTL_* variables that are not config overrides.
RESERVED_ENV = {"LLMCTL_HOME", "LLMCTL_CONFIG", "LLMCTL_DEBUG", "LLMCTL_SYSTEM"}
ENV_PREFIX = "LLMCTL_"


@dataclass(frozen=True)
class LoadedConfig:
    """The validated config plus where it came from, for `llmctl config show`."""

    config: Config
    path: Path | None  # the file that was read, or None when only defaults apply
    sources: dict[str, str] = field(default_factory=dict)  # "a.b.c" -> "file" | "env:NAME"
    paths: Paths | None = None

    def source_of(self, key_path: str) -> str:
        """Where a leaf value came from: 'file', 'env:LLMCTL_...', or 'default'."""
        if key_path in self.sources:
            return self.sources[key_path]
        # A value inside a mapping that came whole from one place.
        parts = key_path.split(".")
        for i in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:i])
            if prefix in self.sources:
                return self.sources[prefix]
        return "default"


def default_config_path(paths: Paths) -> Path:
    return paths.config_file


def find_config_file(explicit: str | os.PathLike | None, paths: Paths) -> tuple[Path | None, bool]:
    """Return (path, named_explicitly). The path may not exist when not named explicitly."""
    if explicit:
        return Path(explicit), True
    env = os.environ.get("LLMCTL_CONFIG")
    if env:
        return Path(env), True
    candidate = default_config_path(paths)
    if candidate.is_file():
        return candidate, False
    return None, False


# A config file is small. These bounds turn hostile YAML (an alias bomb that expands to gigabytes,
# 50,000 nested lists) into a one-line error instead of a traceback or an exhausted host.
MAX_DEPTH = 64  # nesting of mappings and lists
MAX_VALUES = 100_000  # keys and values, counted after expanding aliases


def _bounded_loader():
    """yaml.SafeLoader that refuses nesting deeper than MAX_DEPTH while it composes (before Python's
    recursion limit is hit)."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        _depth = 0

        def compose_node(self, parent, index):
            self._depth += 1
            try:
                if self._depth > MAX_DEPTH:
                    raise yaml.composer.ComposerError(
                        None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
                    )
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return BoundedLoader


def safe_load(text: str) -> Any:
    """yaml.safe_load with the bounds above. Raises yaml.YAMLError, or ValueError for a value that
    cannot be built (an integer of more than 4300 digits) or that is too large once aliases expand."""
    loader = _bounded_loader()(text)
    try:
        data = loader.get_single_data()
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()
    _check_size(data)
    return data


def _check_size(data: Any) -> None:
    """Walk the loaded data (aliases expanded, as every later reader sees it) without recursion;
    stop at the first bound crossed."""
    stack = [(data, 0)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ValueError(f"more than {MAX_VALUES} values (after expanding aliases)")
        if depth > MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels (after expanding aliases)")
        if isinstance(value, dict):
            stack.extend((k, depth + 1) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def _read_yaml(path: Path, content: bytes | None = None) -> dict[str, Any]:
    """The file's YAML (or `content`, its bytes as the caller already read them)."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8") if content is None else content.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}", hint="pass --config PATH or set LLMCTL_CONFIG") from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a directory: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except ValueError as exc:  # an integer too long to convert, or the bounds above
        raise ConfigError(f"{path}: invalid YAML: {str(exc).split(';')[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, not {type(data).__name__}")
    return data


def _env_overrides(environ: dict[str, str]) -> list[tuple[str, list[str], Any]]:
    """LLMCTL_A__B__C=value -> [("LLMCTL_A__B__C", ["a", "b", "c"], parsed value)]."""
    import yaml

    out = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if not key:
            continue
        parts = [p for p in key.split("__")]
        if any(not p for p in parts):
            raise ConfigError(f"{name}: malformed override (use LLMCTL_SECTION__KEY=value)")
        try:
            value = safe_load(raw) if raw.strip() else raw
        except (yaml.YAMLError, ValueError):
            value = raw
        out.append((name, parts, value))
    return out


def _set_path(data: dict, parts: list[str], value: Any, env_name: str) -> None:
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = {}
            node[part] = nxt
        elif not isinstance(nxt, dict):
            raise ConfigError(f"{env_name}: {'.'.join(parts[: i + 1])} is not a section")
        node = nxt
    node[parts[-1]] = value


def _leaf_paths(data: Any, prefix: str = "") -> list[str]:
    if isinstance(data, dict) and data:
        out = []
        for k, v in data.items():
            out.extend(_leaf_paths(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return [prefix] if prefix else []


def format_validation_error(exc: Any, env_paths: dict[str, str] | None = None) -> str:
    """pydantic ValidationError -> 'a.b.c: message' lines, most useful first."""
    from llmctl.text import printable

    lines = []
    for err in exc.errors():
        loc = [printable(p) for p in err.get("loc", ())]  # a key may hold a control character
        key = ".".join(loc) or "(top level)"
        etype = err.get("type", "")
        msg = err.get("msg", "invalid value")
        if etype == "extra_forbidden":
            suggestion = _suggest(loc)
            msg = "unknown key" + (f" (did you mean '{suggestion}'?)" if suggestion else "")
        elif etype == "missing":
            msg = "required key is missing"
        else:
            msg = msg[0].lower() + msg[1:] if msg else msg
            msg = msg.removeprefix("value error, ").removeprefix("assertion failed, ")
        origin = (env_paths or {}).get(key)
        lines.append(f"{key}: {msg}" + (f" (from {origin})" if origin else ""))
    return "; ".join(lines)


def _suggest(loc: list[str]) -> str | None:
    import difflib

    from llmctl.schema import known_keys

    choices = known_keys(loc[:-1])
    if not choices:
        return None
    match = difflib.get_close_matches(loc[-1], choices, n=1, cutoff=0.6)
    return match[0] if match else None


def validate(data: dict[str, Any], *, env_paths: dict[str, str] | None = None) -> Config:
    from pydantic import ValidationError

    from llmctl.schema import Config

    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, env_paths)) from None


def load_config(
    explicit: str | os.PathLike | None = None,
    *,
    system: bool | None = None,
    environ: dict[str, str] | None = None,
    use_env: bool = True,
    content: bytes | None = None,
) -> LoadedConfig:
    """Find, read, merge the LLMCTL_* overrides into, and validate the config. `content`: the
    bytes of the file it finds, when the caller has read them already (health's plan key)."""
    paths = resolve_paths(system)
    environ = dict(os.environ if environ is None else environ)
    path, _named = find_config_file(explicit, paths)
    data: dict[str, Any] = _read_yaml(path, content) if path is not None else {}
    sources = {p: "file" for p in _leaf_paths(data)}
    env_paths: dict[str, str] = {}
    if use_env:
        for name, parts, value in _env_overrides(environ):
            _set_path(data, parts, value, name)
            key = ".".join(parts)
            sources[key] = f"env:{name}"
            env_paths[key] = name
    config = validate(data, env_paths=env_paths)
    return LoadedConfig(config=config, path=path, sources=sources, paths=paths)


def section_names(section: str, explicit: str | os.PathLike | None = None, *, system: bool | None = None) -> list[str]:
    """The names under a top-level mapping of the config file (`services`, `models`, `upstreams`),
    read without validating anything: for shell completion, which must be quick (no pydantic) and
    must never fail (any problem: no names)."""
    from llmctl.errors import LlmctlError
    from llmctl.text import is_name

    try:
        path, _named = find_config_file(explicit, resolve_paths(system))
        value = _read_yaml(path).get(section) if path is not None else None
    except (LlmctlError, OSError, ValueError, RecursionError):
        return []
    return sorted(k for k in value if is_name(k)) if isinstance(value, dict) else []


def check_file(path: str | os.PathLike) -> Config:
    """Validate one file on its own (no environment overrides): `llmctl config check FILE`."""
    p = Path(path)
    return validate(_read_yaml(p))
