"""`llmctl ps`: what each server runs, read from its `GET /status` (core: returns data, prints nothing).

A target is a base URL and the API key to send (the CLI makes them from the configured services, with
the keys health uses: the `api-keys-<service>` credential of the sandboxed health unit, or the
service's api_keys_file; or from --url). Every target is asked at once, each with its own deadline;
one that does not answer is a row with its error, never a failed run of the others.

A server without /status (not llmctl serve, or an older one) answers 404 there: its /v1/models is
listed instead, with what it says of each model's status.

httpx only (imported inside collect); no starlette, no llama_cpp: health's user may run this.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmctl import __version__

USER_AGENT = f"llmctl-ps/{__version__}"
MAX_BODY_BYTES = 4 << 20


@dataclass(frozen=True)
class PsTarget:
    name: str  # the service, or host:port of a --url
    base_url: str  # scheme://host:port[/prefix], no trailing slash
    api_key: str | None = field(default=None, repr=False)
    setup_error: str | None = None  # the key could not be read: reported, not asked


@dataclass(frozen=True)
class ServerStatus:
    name: str
    url: str
    ok: bool
    error: str | None = None
    source: str = "status"  # status (llmctl serve's /status) | models (/v1/models only)
    models: tuple[dict[str, Any], ...] = ()
    process: dict[str, Any] | None = None
    server: dict[str, Any] = field(default_factory=dict)  # the rest of /status: version, uptime, limits

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "ok": self.ok,
            "error": self.error,
            "source": self.source,
            "server": self.server,
            "process": self.process,
            "models": list(self.models),
        }


def collect(targets: Sequence[PsTarget], *, timeout_s: float = 5.0) -> list[ServerStatus]:
    """Every target's status, in the order given."""
    return asyncio.run(_collect(targets, timeout_s))


async def _collect(targets: Sequence[PsTarget], timeout_s: float) -> list[ServerStatus]:
    import httpx

    async with httpx.AsyncClient(
        timeout=timeout_s, follow_redirects=False, trust_env=False, headers={"User-Agent": USER_AGENT}
    ) as client:
        return list(await asyncio.gather(*(_one(client, t, timeout_s) for t in targets)))


async def _get(client: Any, target: PsTarget, path: str, timeout_s: float) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    async with asyncio.timeout(timeout_s):
        async with client.stream("GET", target.base_url + path, headers=headers) as resp:
            body = b""
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise ValueError(f"{path} answered more than {MAX_BODY_BYTES >> 20} MiB")
            if resp.status_code != 200:
                return resp.status_code, _error_message(body)
            import json

            return 200, json.loads(body)


def _error_message(body: bytes) -> str:
    import json

    try:
        err = json.loads(body).get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
    except (ValueError, AttributeError):
        pass
    return body[:200].decode("utf-8", "replace")


async def _one(client: Any, target: PsTarget, timeout_s: float) -> ServerStatus:
    import httpx

    from llmctl.text import printable

    url = target.base_url
    if target.setup_error:
        return ServerStatus(target.name, url, False, target.setup_error)
    try:
        code, doc = await _get(client, target, "/status", timeout_s)
        if code == 404:
            code, doc = await _get(client, target, "/v1/models", timeout_s)
            if code == 200 and isinstance(doc, dict) and isinstance(doc.get("data"), list):
                models = tuple(
                    {"id": str(m.get("id")), "status": str(m.get("status", "unknown"))}
                    for m in doc["data"]
                    if isinstance(m, dict)
                )
                return ServerStatus(target.name, url, True, source="models", models=models)
        if code != 200:
            hint = " (check the API key)" if code == 401 else ""
            return ServerStatus(target.name, url, False, f"HTTP {code}: {printable(str(doc))[:200]}{hint}")
        if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
            return ServerStatus(target.name, url, False, "/status did not answer a status document")
        models = tuple(m for m in doc["models"] if isinstance(m, dict))
        process = doc.get("process") if isinstance(doc.get("process"), dict) else None
        server = {k: v for k, v in doc.items() if k not in ("models", "process", "object")}
        return ServerStatus(target.name, url, True, models=models, process=process, server=server)
    except TimeoutError:
        return ServerStatus(target.name, url, False, f"no answer within {timeout_s:g}s")
    except httpx.HTTPError as exc:
        return ServerStatus(target.name, url, False, f"{type(exc).__name__}: {printable(str(exc)) or 'failed'}")
    except ValueError as exc:
        return ServerStatus(target.name, url, False, f"bad answer: {printable(str(exc))[:200]}")
