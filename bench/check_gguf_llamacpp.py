"""Does llama.cpp run what `tuneforge export` writes? The run's GGUF files, loaded by llama-cpp-python (llama.cpp
built from source), against transformers on the merged model: tokenization and greedy tokens on held-out prompts.

    make gguf-check                                   # after `make demo`: builds llama-cpp-python, checks runs/demo
    HF_HUB_OFFLINE=1 .venv/bin/python bench/check_gguf_llamacpp.py runs/demo --prompts data/generated/dates/val.jsonl

Each prompt is rendered with the model's chat template and tokenized by transformers; llama.cpp tokenizes the same
text with its own tokenizer from the file (compared, not assumed), then both decode greedily from transformers'
ids for --max-new-tokens or to the end-of-turn token. f32 and f16 should give identical tokens (f16 rounding may
flip a near-tie; counted); q8_0's agreement is reported. Writes bench/results/gguf_llamacpp.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bench_results import write_results

from tuneforge.docs_block import machine
from tuneforge.eval.generate import render_prompt
from tuneforge.export.gguf import export_gguf
from tuneforge.models.merge import load_for_inference

HERE = Path(__file__).resolve().parent


def read_prompts(path: Path, n: int) -> list[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:n]
    return [(r.get("instruction", "") + ("\n\n" + r["input"] if r.get("input") else "")).strip() for r in rows]


def hf_greedy(model, tok, ids: list[int], max_new: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
    return out[0, len(ids):].tolist()


def llama_greedy(llm, ids: list[int], max_new: int, eos: int) -> list[int]:
    out: list[int] = []
    for token in llm.generate(ids, top_k=1, temp=0.0, reset=True):
        out.append(int(token))
        if token == eos or len(out) >= max_new:
            break
    return out


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def check(run: Path, prompts: list[str], quants: list[str], max_new: int) -> list[dict]:
    from llama_cpp import Llama

    model, tok = load_for_inference(run, dequantize=True)
    model.float().eval()
    texts = [render_prompt(tok, p) for p in prompts]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    reference = [hf_greedy(model, tok, i, max_new) for i in ids]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for quant in quants:
            path = export_gguf(run, Path(tmp) / quant, quant)
            llm = Llama(model_path=str(path), n_ctx=1024, n_threads=2, verbose=False, seed=0)
            same_tokenization = sum(llm.tokenize(t.encode(), add_bos=False, special=True) == i
                                    for t, i in zip(texts, ids))
            start = time.perf_counter()
            got = [llama_greedy(llm, i, max_new, tok.eos_token_id) for i in ids]
            seconds = time.perf_counter() - start
            same = [g == r for g, r in zip(got, reference)]
            prefix = [common_prefix(g, r) / max(len(r), 1) for g, r in zip(got, reference)]
            first_diff = next((k for k, s in enumerate(same) if not s), None)
            rows.append({"quant": quant, "file_mb": round(path.stat().st_size / 2**20, 1), "n": len(ids),
                         "same_tokenization": int(same_tokenization), "identical_greedy": int(sum(same)),
                         "mean_matching_prefix": round(sum(prefix) / len(prefix), 3),
                         "llama_cpp_tokens_per_s": round(sum(map(len, got)) / seconds, 1),
                         "example_llama_cpp": tok.decode(got[0], skip_special_tokens=True),
                         "example_transformers": tok.decode(reference[0], skip_special_tokens=True),
                         "first_difference": None if first_diff is None else {
                             "prompt": prompts[first_diff],
                             "llama_cpp": tok.decode(got[first_diff], skip_special_tokens=True),
                             "transformers": tok.decode(reference[first_diff], skip_special_tokens=True)}})
            del llm
    return rows


def table(rows: list[dict], command: str, run: Path) -> str:
    import llama_cpp

    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, llama-cpp-python {llama_cpp.__version__}, "
             f"run `{run}`:", "", "```bash", command, "```", "",
             "| quant | file (MB) | prompts | same tokenization | identical greedy tokens | mean matching prefix "
             "| llama.cpp tokens/s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['quant']} | {r['file_mb']} | {r['n']} | {r['same_tokenization']}/{r['n']} "
                     f"| {r['identical_greedy']}/{r['n']} | {r['mean_matching_prefix']:.3f} "
                     f"| {r['llama_cpp_tokens_per_s']} |")
    for r in rows:
        if r["first_difference"]:
            d = r["first_difference"]
            lines.append(f"\n{r['quant']}, first differing prompt {d['prompt']!r}: llama.cpp {d['llama_cpp']!r}, "
                         f"transformers {d['transformers']!r}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, nargs="?", default=Path("runs/demo"))
    ap.add_argument("--prompts", type=Path, default=Path("data/generated/dates/val.jsonl"),
                    help="alpaca JSONL whose instructions (and inputs) are the prompts")
    ap.add_argument("-n", type=int, default=50, help="how many prompts")
    ap.add_argument("--quants", default="f32,f16,q8_0")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()
    for path, what in ((args.run, "run (train one first: make demo)"), (args.prompts, "prompts file")):
        if not path.exists():
            raise SystemExit(f"error: {path}: no such {what}")
    rows = check(args.run, read_prompts(args.prompts, args.n), args.quants.split(","), args.max_new_tokens)
    command = (f"HF_HUB_OFFLINE=1 .venv/bin/python bench/check_gguf_llamacpp.py {args.run} --prompts {args.prompts} "
               f"-n {args.n} --quants {args.quants} --max-new-tokens {args.max_new_tokens}")
    md = table(rows, command, args.run)
    write_results("gguf_llamacpp", md, rows)
    print(md)


if __name__ == "__main__":
    main()
