"""Data preparation at scale: reading, rendering and tokenizing N synthetic instruction examples.

Each mode runs in a fresh process (so peak RSS is its own) on the same JSONL file:

  reference  read + encode in memory, one example at a time (the path before the cache; also runs
             in an older checkout: `--mode reference --src OLD/src`)
  memory     read + encode in memory, batched (`data.cache: false`)
  build      read + encode through `datasets.map` into the Arrow cache (a cache miss)
  hit        the same config again: the cache entry, memory-mapped
  stream     one pass of `data.streaming` (read, encode and plan a window at a time)
  floor      the tokenizer alone on the already rendered texts, over the same processes: the bound
             on any path that tokenizes with this tokenizer on this machine (through its tiktoken twin
             where it has one, as the data path does; `--no-twin`: the Rust tokenizer)

  llamafactory  LLaMA-Factory's preprocessing of the same file (its `tokenized_path`: tokenize, save,
             exit), run from its own venv (`--llamafactory-venv`; `pip install torch==2.13.0
             llamafactory==0.9.5` there, uninstall torchvision, and since no torchaudio wheel matches torch
             2.13 and 0.9.5 imports it at start-up, an empty `torchaudio` package in its site-packages)

For each: seconds, examples read per second, peak RSS, and whether every record read is accounted
for (kept + lost = read). Usage:

  .venv/bin/python bench/bench_data.py --n 100000 [--modes reference,memory,build,hit,stream] [--num-proc 2]
  .venv/bin/python bench/bench_data.py --n 100000 --modes llamafactory --llamafactory-venv /tmp/lfvenv
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the model data train answer question river city number people time water light world system "
         "value order point group story field table market window garden letter music paper school").split()


def write_synthetic(path: Path, n: int, seed: int = 0) -> None:
    """Alpaca records shaped like the issue's test set: prompts of 20-300 words, answers of 5-80."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 300)))
            answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 80)))
            f.write(json.dumps({"instruction": f"Task {i}: summarise the text.", "input": prompt,
                                "output": answer}) + "\n")


def _anon_peak_sampler() -> list[int]:
    """The process's peak anonymous memory (RssAnon: what it holds, not the pages of memory-mapped
    files it reads, which RSS also counts and the kernel drops under pressure), sampled every 0.1 s."""
    import threading

    peak = [0]

    def sample():
        while True:
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    peak[0] = max(peak[0], int(line.split()[1]) // 1024)
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    return peak


def child(mode: str, data: str, tokenizer: str, max_length: int, cache_dir: str, num_proc: int | None,
          use_twin: bool = True) -> dict:
    anon = _anon_peak_sampler()
    if not use_twin:  # tokenize with the Rust tokenizer, as before data/fast_bpe.py (forked workers inherit this)
        import tuneforge.data.fast_bpe as fast_bpe
        import tuneforge.data.render as render

        fast_bpe.twin = render.twin = lambda tokenizer: None
    from transformers import AutoTokenizer

    from tuneforge.config import DataConfig

    tok = AutoTokenizer.from_pretrained(tokenizer)
    kw = {"train": data, "max_length": max_length, "max_lost": 1.0}
    start = time.perf_counter()
    if mode == "reference":
        from tuneforge.data.dataset import encode_split, load_splits
        from tuneforge.data.render import encode

        cfg = DataConfig(**kw)
        splits = load_splits(cfg, 0)
        if "cache" in DataConfig.model_fields:  # this checkout batches encode_split: encode one at a time
            kept = [e for e in (encode(ex, tok, max_length, cfg.truncation) for ex in splits.train + splits.val)
                    if e is not None and e.n_targets]
            n_kept, read, balanced = len(kept), splits.account.read, None
        else:
            train, val = encode_split(splits.train, tok, cfg), encode_split(splits.val, tok, cfg)
            n_kept, read, balanced = len(train.encoded) + len(val.encoded), len(splits.train) + len(splits.val), None
    elif mode == "floor":
        # The tokenizer alone on the rendered texts, over the build's processes: what no data path with
        # this tokenizer can beat. Rendering happens before the clock starts.
        from multiprocessing import Pool

        from tuneforge.data.dataset import load_splits
        from tuneforge.data.render import _char_spans

        splits = load_splits(DataConfig(**kw), 0)
        texts = [_char_spans(ex, tok, False)[0] for ex in splits.train + splits.val]
        procs = num_proc or os.cpu_count() or 1
        parts = [texts[i::procs] for i in range(procs)]
        start = time.perf_counter()
        with Pool(procs, initializer=os.environ.__setitem__, initargs=("TOKENIZERS_PARALLELISM", "false")) as pool:
            n_kept = sum(pool.map(_tokenize_all, [(tok, part) for part in parts]))
        read, balanced = len(texts), None
    elif mode == "stream":
        from tuneforge.data.stream import TokenStream

        stream = TokenStream(DataConfig(**kw), tok, 0, batch_tokens=4096, pack_length=None, packing=True)
        n_kept = 0
        while stream.epoch == 0:
            rows, window = stream.next_micro_batch()
            n_kept += sum(len(row) for row in rows) if stream.epoch == 0 else 0
        read, balanced = stream.account.read, stream.account.balanced()
    else:
        from tuneforge.data.token_cache import prepare

        cfg = DataConfig(**kw, cache=mode != "memory", cache_dir=cache_dir, num_proc=num_proc)
        prepared = prepare(cfg, 0, tok)
        n_kept, read, balanced = len(prepared.train) + len(prepared.val), prepared.account.read, \
            prepared.account.balanced()
        if mode == "hit":
            assert prepared.cache.startswith("cache hit"), prepared.cache
            sum(len(prepared.train[i].ids) for i in range(0, len(prepared.train), 97))  # touch the tokens
            prepared.val_examples[:200]  # and the held-out examples a generation-based evaluation reads
    seconds = time.perf_counter() - start
    return {"mode": mode, "seconds": round(seconds, 1), "read": read, "kept": n_kept,
            "examples_per_s": round(read / seconds), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "peak_anon_mb": anon[0],
            # the largest worker process (datasets' workers, for the cache build), apart from this one
            "peak_rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024,
            "balanced": balanced}


def _tokenize_all(args) -> int:
    """Tokenize as the data path does: through the tiktoken twin where there is one (ids and offsets),
    else the Rust tokenizer."""
    from tuneforge.data.fast_bpe import twin

    tok, texts = args
    fast = twin(tok)
    for i in range(0, len(texts), 256):
        if fast is not None:
            fast.encode_batch(texts[i:i + 256], tok.backend_tokenizer)
        else:
            tok.backend_tokenizer.encode_batch(texts[i:i + 256], add_special_tokens=False)
    return len(texts)


def llamafactory(venv: Path, data: Path, tokenizer: str, max_length: int, num_proc: int, work: Path) -> dict:
    """LLaMA-Factory 0.9.5 preprocessing the same alpaca file with the same tokenizer, cutoff and workers."""
    lf = work / "llamafactory"
    shutil.rmtree(lf, ignore_errors=True)
    lf.mkdir(parents=True)
    (lf / "dataset_info.json").write_text(json.dumps({"synthetic": {"file_name": str(data)}}))
    config = {"model_name_or_path": tokenizer, "stage": "sft", "do_train": True, "finetuning_type": "lora",
              "dataset": "synthetic", "dataset_dir": str(lf), "template": "smollm2", "cutoff_len": max_length,
              "preprocessing_num_workers": num_proc, "tokenized_path": str(lf / "tokenized"),
              "output_dir": str(lf / "out"), "overwrite_cache": True, "report_to": "none", "val_size": 0.1}
    (lf / "config.yaml").write_text(json.dumps(config))  # JSON is YAML; 0.9.5 cannot read a .json config
    start = time.perf_counter()
    # 0.9.5 saves the tokenized dataset and then goes on to train: the clock stops when the save is complete
    proc = subprocess.Popen([str(venv / "bin" / "llamafactory-cli"), "train", str(lf / "config.yaml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, HF_HUB_OFFLINE="1", DISABLE_VERSION_CHECK="1"))
    def saved() -> bool:  # dataset_dict.json comes first, then each split's folder, state.json last
        index = lf / "tokenized" / "dataset_dict.json"
        return index.is_file() and all((lf / "tokenized" / split / "state.json").is_file()
                                       for split in json.loads(index.read_text())["splits"])

    while not saved() and proc.poll() is None:
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    peak = _tree_rss_mb(proc.pid)
    proc.kill()
    proc.wait()
    if not saved():
        raise SystemExit("LLaMA-Factory did not save its tokenized dataset")
    import datasets

    saved = datasets.load_from_disk(str(lf / "tokenized"))
    kept = sum(len(saved[k]) for k in saved) if isinstance(saved, datasets.DatasetDict) else len(saved)
    n = sum(1 for _ in open(data))
    return {"mode": "llamafactory", "seconds": round(seconds, 1), "read": n, "kept": kept,
            "examples_per_s": round(n / seconds),
            "peak_rss_mb": peak, "balanced": None}


def _tree_rss_mb(pid: int) -> int:
    """Peak RSS (VmHWM) of a process, read before it is killed (its workers have exited by then)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--modes", default="reference,memory,build,hit,stream")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--num-proc", type=int, default=None)
    ap.add_argument("--tokenizer", default=None, help="default: the embedded model's folder")
    ap.add_argument("--src", default=None, help="run the modes against another checkout's src/ (reference only)")
    ap.add_argument("--work", default=None, help="folder for the data file and cache (default: a temp folder)")
    ap.add_argument("--llamafactory-venv", default=None, help="a venv with llamafactory==0.9.5 (mode llamafactory)")
    ap.add_argument("--no-twin", action="store_true",
                    help="tokenize with the Rust tokenizer, not its tiktoken twin (data/fast_bpe.py)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return
    if args.tokenizer is None:
        from tuneforge.models.embedded import ensure_default_model

        args.tokenizer = str(ensure_default_model())
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"synthetic-{args.n}.jsonl"
    if not data.is_file():
        write_synthetic(data, args.n)
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="true")
    if args.src:
        env["PYTHONPATH"] = args.src
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"# {args.n} examples ({data.stat().st_size / 2**20:.0f} MiB), max_length {args.max_length}, "
          f"{os.cpu_count()} CPUs ({cpu})")
    for mode in args.modes.split(","):
        if mode == "llamafactory":
            print(json.dumps(llamafactory(Path(args.llamafactory_venv), data, args.tokenizer, args.max_length,
                                          args.num_proc or os.cpu_count() or 1, work)))
            continue
        payload = json.dumps([mode, str(data), args.tokenizer, args.max_length, str(cache), args.num_proc]
                             + ([False] if args.no_twin else []))
        out = subprocess.run([sys.executable, __file__, "--child", payload], env=env, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-3000:])
            raise SystemExit(f"mode {mode} failed")
        print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
