"""Stand-in users for the lifecycle walkthrough (docs/lifecycle.md): they ask a served model the
date questions of a JSONL file through the OpenAI client, and give feedback like a careful user:
a thumbs-up for a right answer, and the right answer as the preferred response for a wrong one.

    python examples/simulated_users.py --url http://127.0.0.1:8000 --model dates \
        --data data/generated/dates/train.jsonl --n 300
"""

from __future__ import annotations

import argparse
import json
import urllib.request

import openai


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="dates")
    ap.add_argument("--data", required=True, help="alpaca JSONL: instruction, input, output")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--api-key", default="unused")
    args = ap.parse_args()
    client = openai.OpenAI(base_url=f"{args.url}/v1", api_key=args.api_key, max_retries=0, timeout=300)
    records = [json.loads(line) for line in open(args.data) if line.strip()][: args.n]
    right = 0
    for r in records:
        prompt = f"{r['instruction']}\n\n{r['input']}" if r.get("input") else r["instruction"]
        reply = client.chat.completions.create(model=args.model, temperature=0, max_tokens=16,
                                               messages=[{"role": "user", "content": prompt}])
        answer = reply.choices[0].message.content.strip()
        ok = answer == r["output"].strip()
        right += ok
        feedback = {"completion_id": reply.id, "rating": 1} if ok else \
            {"completion_id": reply.id, "rating": -1, "preferred": r["output"]}
        req = urllib.request.Request(f"{args.url}/v1/feedback", data=json.dumps(feedback).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {args.api_key}"})
        urllib.request.urlopen(req, timeout=60).read()
    print(f"{len(records)} questions asked, {right} answered right, {len(records) - right} corrections sent")


if __name__ == "__main__":
    main()
