"""Load test of `tuneforge serve` on loopback: concurrent OpenAI clients against a tiny model.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_serve.py [--clients 32] [--requests 320] [--max-tokens 16]

Starts the real server (uvicorn, the same app `tuneforge serve` runs) in this process on a free
port, fires `--requests` chat completions from `--clients` threads with the official openai
client, and reports errors, p50/p90/p99 latency, throughput and the batch sizes the server formed
(from its Prometheus histogram). A tiny random model keeps the numbers about the server, not the model.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _batch_histogram(metrics_text: str) -> dict[str, float]:
    """Cumulative bucket counts of tuneforge_batch_size from the Prometheus text format."""
    out = {}
    for m in re.finditer(r'tuneforge_batch_size_bucket\{le="([^"]+)"\} ([0-9.e+]+)', metrics_text):
        out[m.group(1)] = float(m.group(2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=320)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--out", default="bench/results/serve.json")
    args = ap.parse_args()

    import openai

    from tuneforge.models.tiny import build_tiny_model
    from tuneforge.serve.app import create_app
    from tuneforge.serve.background import serve_in_thread
    from tuneforge.serve.models import ServedModels

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny", "llama", seed=0)
        models = ServedModels(str(model_dir), {}, device="cpu")
        app = create_app(models, Path(tmp) / "serve", max_tokens_limit=64, max_batch=args.max_batch)
        with serve_in_thread(app) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)

            def one(i: int) -> tuple[float, str | None, int]:
                t = time.perf_counter()
                try:
                    r = client.chat.completions.create(
                        model="base", max_tokens=args.max_tokens, temperature=0,
                        messages=[{"role": "user", "content": f"Request {i}: say something about number {i}."}])
                    return time.perf_counter() - t, None, r.usage.completion_tokens
                except Exception as e:  # a load test counts failures instead of stopping at the first
                    return time.perf_counter() - t, f"{type(e).__name__}: {e}", 0

            client.chat.completions.create(model="base", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                results = list(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - started
            metrics = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
            health = json.loads(urllib.request.urlopen(f"{url}/health", timeout=30).read())

    latencies = sorted(r[0] for r in results)
    errors = [r[1] for r in results if r[1]]
    q = statistics.quantiles(latencies, n=100)
    report = {
        "clients": args.clients, "requests": args.requests, "max_tokens": args.max_tokens, "max_batch": args.max_batch,
        "errors": len(errors), "first_errors": errors[:3], "wall_s": round(wall, 2),
        "requests_per_s": round(args.requests / wall, 2),
        "completion_tokens_per_s": round(sum(r[2] for r in results) / wall, 1),
        "latency_s": {"p50": round(q[49], 3), "p90": round(q[89], 3), "p99": round(q[98], 3),
                      "max": round(latencies[-1], 3)},
        "batches": health["batches"], "batched_requests": health["batched_requests"],
        "mean_batch_size": round(health["batched_requests"] / max(health["batches"], 1), 2),
        "batch_size_buckets": _batch_histogram(metrics),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
