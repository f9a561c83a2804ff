"""API-key files: the one format, the one credential name, the one reader.

The format, everywhere a key file is read (a service's `api_keys_file`, the `api-keys` credential
systemd passes to serve and health, an upstream's `api_key_file`, the Secret files of the pods):

- UTF-8 text, one key per line;
- whitespace around a key is dropped; blank lines and lines that start with `#` are skipped;
- a key given twice counts once; the first key is the one a client (health, the ServiceMonitor,
  an upstream call) sends.

Under systemd a key file arrives as a credential (`LoadCredential=`): `$CREDENTIALS_DIRECTORY/<name>`.
The server's is named CREDENTIAL_NAME; the health unit gets one per service,
`credential_name(service)`.

Standard library only: health, serve and the upstreams import this.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from llmctl.errors import ConfigError

CREDENTIAL_NAME = "api-keys"  # LoadCredential=api-keys:FILE, and the pods' Secret key
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"  # where systemd (and the pods' mount) put the credentials


def credential_name(service: str | None = None) -> str:
    """The credential a unit loads a key file as: `api-keys` (the server), `api-keys-<service>`
    (the health unit, one per service it probes)."""
    return CREDENTIAL_NAME if service is None else f"{CREDENTIAL_NAME}-{service}"


@dataclass(frozen=True)
class ApiKey:
    """One API key. `id` is a short hash: safe to log and to key rate limits by."""

    secret: bytes = field(repr=False)
    id: str


def key_id(secret: bytes) -> str:
    return "key-" + hashlib.sha256(secret).hexdigest()[:12]


def parse_keys(text: str) -> tuple[str, ...]:
    """The keys of a key file's text, in order, each once (see the module's docstring)."""
    keys: dict[str, None] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keys.setdefault(line, None)
    return tuple(keys)


def parse_api_keys(text: str) -> tuple[ApiKey, ...]:
    """parse_keys, as the server compares them: bytes, with their ids."""
    return tuple(ApiKey(k.encode("utf-8"), key_id(k.encode("utf-8"))) for k in parse_keys(text))


def read_keys(path: str | os.PathLike[str], what: str, *, hint: str | None = None) -> tuple[str, ...]:
    """The keys in a file. A file that is missing, unreadable, not UTF-8 or holds no key is a
    ConfigError (exit 2) that starts with `what` (the key path or flag that named the file);
    `hint` goes with the error of a file that holds no key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what}: API keys file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what}: {path} is a directory, not an API keys file") from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read API keys file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: {path} is not UTF-8 text (one key per line)") from None
    keys = parse_keys(text)
    if not keys:
        raise ConfigError(
            f"{what}: {path} holds no API keys (one per line)",
            hint=hint or "add a key; lines that start with # are comments",
        )
    return keys


def first_key(path: str | os.PathLike[str], what: str) -> str:
    """The key a client sends: the file's first."""
    return read_keys(path, what)[0]


def first_key_shell(quoted_path: str) -> str:
    """first_key as a POSIX shell command (sed), for the commands llmctl prints for people to run
    (`k8s render`'s `kubectl create secret`): the same rule, checked against first_key by a test."""
    return f"sed -n -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' -e '/^#/d' -e '/./{{p;q;}}' {quoted_path}"


def credential_file(names: tuple[str, ...] | list[str], environ: Mapping[str, str] | None = None) -> Path | None:
    """The first of `$CREDENTIALS_DIRECTORY/<name>` that is a file, or None (no such directory,
    or none of them in it)."""
    env = os.environ if environ is None else environ
    directory = env.get(CREDENTIALS_ENV)
    if not directory:
        return None
    for name in names:
        path = Path(directory) / name
        if path.is_file():
            return path
    return None


def load_api_keys(
    flag_file: str | None, config_file: str | None, key_path: str, environ: Mapping[str, str] | None = None
) -> tuple[tuple[ApiKey, ...], str | None]:
    """The server's keys: the systemd credential `api-keys` when present, else the flag's file,
    else the config's file; ((), None) when none is given. Returns the keys and where they came from."""
    credential = credential_file([CREDENTIAL_NAME], environ)
    if credential is not None:
        path, what = credential, "systemd credential"
    elif flag_file:
        path, what = Path(flag_file).expanduser(), "--api-keys-file"
    elif config_file:
        path, what = Path(config_file).expanduser(), key_path
    else:
        return (), None
    keys = read_keys(path, what, hint="add a key, or drop the setting to serve without keys on loopback")
    return tuple(ApiKey(k.encode("utf-8"), key_id(k.encode("utf-8"))) for k in keys), str(path)
