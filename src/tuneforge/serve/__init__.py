"""`tuneforge serve`: an OpenAI-compatible HTTP API for tuneforge models.

    models.py    ServedModels: one base, several adapters, each served under a model name
    batching.py  MicroBatcher: concurrent requests share forward passes (one generation thread)
    store.py     FeedbackStore (SQLite): completions and user feedback; export_preferences -> DPO pairs
    app.py       create_app (FastAPI: /v1/chat/completions, /v1/completions, /v1/models, /v1/feedback,
                 /health, /metrics) and serve() (checks, then uvicorn)
"""
