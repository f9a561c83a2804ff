"""Upstream fallback for `llmctl serve`: OpenAI-compatible endpoints tried, in order, when the local
model cannot take a request; a circuit breaker per upstream; privacy rules and airgap mode.

circuit.py   the breaker (closed -> open after N failures -> half-open after a cool-down), clock injected
config.py    the config's `upstreams:` / `routing:` / `airgap` -> frozen objects (API keys read here)
router.py    the route decision and the httpx proxy (JSON and SSE), with retries before the first byte
"""
