"""`llmctl serve`: an OpenAI-compatible HTTP server for verified models (one, or several on demand).

    settings.py   flags + config -> ServeSettings (resolves and verifies the model, loads API keys)
    engine.py     the scheduler: one worker thread owns the Llama; jobs in, chunks out
    pool.py       the models: which are loaded, loading on demand, unloading to make room (max_loaded,
                  memory_budget, pinned, keep_alive_s, preload); each model has its own engine
    resources.py  resident memory (psutil, per model file) and GPU memory (nvidia-smi) of the process
    ps.py         `llmctl ps`'s core: reads /status of the servers (httpx only)
    security.py   API keys (constant-time) and the token-bucket rate limiter
    metrics.py    Prometheus metrics in a per-app registry (llama.cpp's names where they overlap)
    protocol.py   OpenAI's request bodies: validated, then translated to the engine's GenerationRequest
    grammar.py    response_format (JSON schema) -> a GBNF grammar, bounded
    responses.py  OpenAI's response shapes: error bodies, SSE events, chunks, model cards
    context.py    ServerContext: the state the gate, the routes and the streams share (app.state.ctx)
    gate.py       the admission gate: access log, API key (401), rate limit (429), body size (413),
                  stream slots (503 + Retry-After)
    streaming.py  SSE relay of a job's chunks; a client that leaves cancels its job
    routes.py     /health, /ready, /metrics, /v1/*: module-level handlers that read app.state.ctx
    app.py        create_app(): wires the context, metrics, router, routes and gate into one ASGI app
    server.py     uvicorn, sd_notify (READY, WATCHDOG, STOPPING) and graceful shutdown

Heavy libraries (llama_cpp, starlette, uvicorn, prometheus_client, pydantic) are imported only
inside these modules, which only `llmctl serve` imports.
"""
