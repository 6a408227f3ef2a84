"""Prompts for examples/rl.yaml: generated arithmetic questions (calibration's generator, whose base
accuracy on the embedded model is measured per level: 1d+1d 83%, 1d-1d 51%, 2d+2d 28%) written as
{"prompt", "answer", "level"} records, train and held-out without a question in both.

    python examples/rl_arithmetic.py --out data/generated/rl-arithmetic --levels 1d-1d --n 36 --val 9
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tuneforge.calibration.generated import LEVELS, arithmetic_questions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/generated/rl-arithmetic")
    ap.add_argument("--levels", default="1d-1d", help="comma-separated: " + ", ".join(
        level.name.removeprefix("arithmetic ") for level in LEVELS))
    ap.add_argument("--n", type=int, default=36, help="train questions (1d-1d has 45 in all)")
    ap.add_argument("--val", type=int, default=9, help="held-out questions")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    wanted = {f"arithmetic {name.strip()}" for name in args.levels.split(",")}
    levels = tuple(level for level in LEVELS if level.name in wanted)
    if len(levels) != len(wanted):
        ap.error(f"--levels: unknown level in {args.levels!r}")
    questions = arithmetic_questions(args.n + args.val, args.seed, levels)  # distinct: no leak into held-out
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", questions[:args.n]), ("val", questions[args.n:])):
        rows = [{"prompt": q["question"], "answer": q["target"], "level": q["source"]} for q in part]
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{out / name}.jsonl: {len(rows)} prompts")


if __name__ == "__main__":
    main()
