"""The server's config: one dataclass, the same object for the Python API, YAML and the CLI flags."""
from __future__ import annotations

from dataclasses import dataclass

from instructkit.config import F


@dataclass
class ServeConfig:
    """Serve models with an OpenAI-compatible API (/v1/completions, /v1/chat/completions) and a playground."""
    model: str = F("", "model directory to serve (the positional MODEL_DIR)")
    name: str = F("", "the name clients pass as `model` for it; empty = the directory's name")
    models: list = F([], "more models as NAME=DIR (flag: --model NAME=DIR, repeatable)")
    host: str = F("127.0.0.1", "address to listen on (loopback by default: nothing is exposed unless asked)")
    port: int = F(8000, "port to listen on")
    filters: str = F("", "filter rules file (YAML/JSON): word lists, regexes, score thresholds; see docs/serving.md")
    label_url: str = F("", "the labeling app's comparison endpoint the playground posts pairs to, e.g. "
                           "http://127.0.0.1:8001/api/comparisons")
    label_token: str = F("", "bearer token sent to the labeling app (or set $INSTRUCTKIT_LABEL_TOKEN)")
    max_batch_rows: int = F(32, "most sequences decoded together in one batch")
    batch_wait_ms: float = F(5.0, "how long the batcher waits for more requests before starting a batch")
    max_queued_rows: int = F(1024, "most sequences waiting; beyond it requests get 429")
    max_body_bytes: int = F(1 << 20, "largest request body accepted (413 above it)")
    max_tokens_limit: int = F(1024, "largest max_tokens a request may ask for (also capped by the context length)")
    max_n: int = F(16, "largest n (choices per prompt)")
    max_prompts: int = F(32, "most prompts in one /v1/completions request")
    seed: int = F(0, "seed of the server's generator, used by requests that give no seed")
    threads: int = F(0, "torch CPU threads; 0 = $OMP_NUM_THREADS or all cores")
    log_level: str = F("info", "uvicorn log level: critical|error|warning|info|debug")
