"""`tuneforge serve`: an OpenAI-compatible HTTP API for tuneforge models.

    models.py       ServedModels: one base, several adapters, each served under a model name
    batching.py     MicroBatcher: concurrent requests share forward passes (one generation thread)
    store.py        FeedbackStore (SQLite): completions and user feedback; export_preferences -> DPO pairs
    app.py          create_app (assembles state, routes, error handlers, middleware) and serve() (checks, then uvicorn)
    routes.py       the route map: /v1/chat/completions, /v1/completions, /v1/models, /v1/feedback, /health, /metrics
    completions.py  chat and legacy completions: limits, batching, OpenAI response and SSE stream shapes
    schemas.py      the request bodies (pydantic), including the OpenAI features refused with a 400
    body.py         reading a JSON body into a request model (size limit, OpenAI-shaped errors)
    errors.py       APIError, OpenAI's error shape, the app's exception handlers
    middleware.py   API key check, request id, metrics and request log around every request
    monitoring.py   Prometheus metrics, the request log (requests.jsonl), the per-request record
    auth.py         the API key rule (beyond loopback a key is required); API_KEY_ENV for the CLI
    background.py   serve_in_thread: a served app on a free loopback port, for tests and notebooks
"""
