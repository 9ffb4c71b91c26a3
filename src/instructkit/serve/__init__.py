"""Serving: an OpenAI-compatible completions/chat server with a batcher, a filter layer and a playground.

    instructkit serve runs/sft --port 8000                        # then any OpenAI client:
    OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-").completions.create(model="sft", prompt="...")

Modules: `decode` (step-wise batched sampling with per-row settings), `engine` (the batcher thread),
`filters` (word / regex / score rules), `protocol` (OpenAI's request and error formats), `server`
(the FastAPI app and the playground), `cli`. docs/serving.md is the user guide."""
from instructkit.serve.config import ServeConfig

__all__ = ["ServeConfig", "Server", "create_app", "BackgroundServer"]


def __getattr__(name):  # the web stack is imported only when used (`pip install instructkit[serve]`)
    if name in ("Server", "create_app", "BackgroundServer", "load_models"):
        from instructkit.serve import server
        return getattr(server, name)
    raise AttributeError(name)
