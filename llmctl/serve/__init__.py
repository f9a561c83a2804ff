"""`llmctl serve`: an OpenAI-compatible HTTP server for one verified model.

    settings.py   flags + config -> ServeSettings (resolves and verifies the model, loads API keys)
    engine.py     the scheduler: one worker thread owns the Llama; jobs in, chunks out
    security.py   API keys (constant-time) and the token-bucket rate limiter
    metrics.py    Prometheus metrics in a per-app registry (llama.cpp's names where they overlap)
    app.py        the Starlette app: routes, the request gate (body size, auth, rate limit, access log)
    server.py     uvicorn, sd_notify (READY, WATCHDOG, STOPPING) and graceful shutdown

Heavy libraries (llama_cpp, starlette, uvicorn, prometheus_client, pydantic) are imported only
inside these modules, which only `llmctl serve` imports.
"""
