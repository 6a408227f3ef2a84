"""The uncertainty query: "here is a question and a proposed answer; is it correct? no / yes".

One rendering serves training (the option token is the target), zero-shot scoring, the tuned
model's confidence and serving, so a confidence always means the same question to the model.
The confidence is P(yes) renormalised over the two option tokens, read at the last prompt position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tuneforge.calibration.questions import Question
from tuneforge.data.render import Encoded
from tuneforge.errors import UserError
from tuneforge.eval.generate import render_prompt
from tuneforge.models.anatomy import decoder_and_head

ANSWER_MARK = "Proposed answer: "


@dataclass(frozen=True)
class QuerySpec:
    query: str  # "Is the proposed answer correct?"
    options: tuple[str, str]  # (wrong, right), e.g. ("no", "yes")
    token_ids: tuple[int, int]  # the first token of each option after the assistant prompt

    def to_dict(self) -> dict:
        return {"query": self.query, "options": list(self.options), "token_ids": list(self.token_ids)}

    @classmethod
    def from_dict(cls, d: dict) -> "QuerySpec":
        return cls(d["query"], tuple(d["options"]), tuple(d["token_ids"]))


def question_block(q: Question) -> str:
    """Passage, question and lettered options, the part shared by the answer prompt and the query."""
    parts = [q.context.strip()] if q.context else []
    parts.append(q.question.strip())
    if q.options:
        parts.append("\n".join(f"{letter}. {text}" for letter, text in zip(q.letters, q.options)))
    return "\n".join(parts)


def answer_prompt(q: Question, instruction_choice: str, instruction_open: str) -> str:
    return f"{question_block(q)}\n{instruction_choice if q.options else instruction_open}"


def reference_answer(q: Question) -> str:
    """How a solved few-shot example answers: the letter and text for multiple choice."""
    return f"{q.answer_letter}. {q.targets[0]}" if q.options and q.answer_letter else q.targets[0]


def answer_messages(q: Question, shots: list[Question], instruction_choice: str, instruction_open: str) -> list[dict]:
    """The chat that asks for an answer; few-shot examples go in as earlier solved turns."""
    messages: list[dict] = []
    for s in shots:
        messages.append({"role": "user", "content": answer_prompt(s, instruction_choice, instruction_open)})
        messages.append({"role": "assistant", "content": reference_answer(s)})
    messages.append({"role": "user", "content": answer_prompt(q, instruction_choice, instruction_open)})
    return messages


def query_content(q: Question, answer: str, query: str, options: tuple[str, str]) -> str:
    wrong, right = options
    return (f"{question_block(q)}\n\n{ANSWER_MARK}{answer.strip()}\n\n{query}\n"
            f"Choices:\n(i): {wrong}\n(ii): {right}\nAnswer {wrong} or {right}.")


def query_text(tokenizer, q: Question, answer: str, spec: QuerySpec) -> str:
    """The rendered prompt; the model's next token is the option it picks."""
    return render_prompt(tokenizer, query_content(q, answer, spec.query, spec.options))


def make_query_spec(tokenizer, query: str, options: tuple[str, str]) -> QuerySpec:
    """Find the token each option starts with after the assistant prompt.

    Only the first token is read, so multi-token options work as long as their first tokens differ;
    options that start alike cannot be told apart and are refused.
    """
    probe = Question(question="What is 1 + 1?", targets=["2"])
    prefix = render_prompt(tokenizer, query_content(probe, "2", query, options))
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    firsts = []
    for option in options:
        ids = tokenizer(prefix + option, add_special_tokens=False)["input_ids"]
        if ids[:len(prefix_ids)] != prefix_ids or len(ids) == len(prefix_ids):
            raise UserError(f"calibration.options: '{option}' merges with the end of the prompt when tokenized; "
                            "choose plain words such as [no, yes]")
        firsts.append(ids[len(prefix_ids)])
    if firsts[0] == firsts[1]:
        token = tokenizer.convert_ids_to_tokens(firsts[0])
        raise UserError(f"calibration.options: '{options[0]}' and '{options[1]}' start with the same token "
                        f"({token!r}), so the model's choice cannot be read from one token; choose options "
                        "whose first tokens differ, e.g. [no, yes]")
    return QuerySpec(query, tuple(options), (int(firsts[0]), int(firsts[1])))


def _overlapping(offsets, start: int, end: int) -> list[bool]:
    # Overlap, not containment: BPE tokens carry the leading space (" Paris" starts before the answer).
    return [i > 0 and b > start and a < end for i, (a, b) in enumerate(offsets)]


def encode_query(tokenizer, q: Question, answer: str, correct: bool, spec: QuerySpec,
                 max_length: int, answering: list[dict] | None = None) -> Encoded | None:
    """Training example: the query then the right option's token, the only target. None when longer
    than max_length.

    aux_mask marks what the regulariser reads. With `answering` (the chat that asked for the
    answer), the proposed answer under that prompt follows as a second sequence (position ids
    restart, so the two never attend to each other) and aux_mask marks its answer tokens: the
    regulariser then keeps the model's answering itself where the base model had it, as the
    reference (Kapoor et al., 2024) does. Without it, aux_mask marks the answer inside the query.
    """
    text = query_text(tokenizer, q, answer, spec)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    query_ids = ids + [spec.token_ids[int(bool(correct))]]
    mask = [False] * len(ids) + [True]
    if answering is None:
        start = text.rfind(ANSWER_MARK) + len(ANSWER_MARK)
        aux = _overlapping(offsets, start, start + len(answer.strip())) + [False]
        return None if len(query_ids) > max_length else Encoded(query_ids, mask, aux_mask=aux)
    prompt = render_prompt(tokenizer, answering)
    full = prompt + answer.strip()
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    if len(query_ids) + len(enc["input_ids"]) > max_length:
        return None
    aux = [False] * len(query_ids) + _overlapping(enc["offset_mapping"], len(prompt), len(full))
    return Encoded(query_ids + enc["input_ids"], mask + [False] * len(enc["input_ids"]), aux_mask=aux,
                   restarts=[len(query_ids)])


@torch.inference_mode()
@torch.compiler.set_stance("force_eager")  # blocks compiled for training would recompile here
def score_queries(model, tokenizer, texts: list[str], spec: QuerySpec, batch_size: int = 16,
                  amp_dtype=None, want_hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logit margin log P(right) - log P(wrong) of each rendered query (and the final hidden state).

    Right padding keeps position ids correct without a cache; the last real token is gathered.
    """
    from tuneforge.train.precision import autocast

    device = next(model.parameters()).device
    body, head = decoder_and_head(model)
    option_rows = head.weight[list(spec.token_ids)]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    margins = torch.zeros(len(ids))
    hidden_out = None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = len(ids[idx[0]])
            batch = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                batch[r, :len(ids[i])] = torch.tensor(ids[i])
                mask[r, :len(ids[i])] = 1
            batch, mask = batch.to(device), mask.to(device)
            with autocast(device, amp_dtype):
                hidden = body(input_ids=batch, attention_mask=mask, use_cache=False).last_hidden_state
            last = hidden[torch.arange(len(idx), device=device), mask.sum(1) - 1].float()
            logits = last @ option_rows.float().t()
            if head.bias is not None:
                logits = logits + head.bias[list(spec.token_ids)].float()
            margins[idx] = (logits[:, 1] - logits[:, 0]).cpu()
            if want_hidden:
                if hidden_out is None:
                    hidden_out = torch.zeros(len(ids), last.shape[1])
                hidden_out[idx] = last.cpu()
    finally:
        model.train(was_training)
    return margins, hidden_out


def margin_to_confidence(margin: torch.Tensor, temperature: float = 1.0) -> list[float]:
    return torch.sigmoid(margin / temperature).tolist()


def platt_confidence(margin: torch.Tensor, scale: float, bias: float) -> list[float]:
    return torch.sigmoid(margin * scale + bias).tolist()


def confidence_of(margin: float, temperature: float = 1.0) -> float:
    return 1.0 / (1.0 + math.exp(-margin / temperature))
