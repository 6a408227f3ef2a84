"""Tiny randomly initialised models with a real tokenizer, for tests and smoke runs.

The tokenizer is a byte-level BPE trained on the fly on a small built-in corpus, so any text
tokenizes (bytes are the fallback) and nothing is downloaded. The chat template is ChatML,
the format of the embedded default model, so tiny runs exercise the same rendering path.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

from tuneforge.errors import UserError

ARCHS = ("llama", "qwen2", "gpt2")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A user asks a question and the assistant answers.
What is the capital of France? The capital of France is Paris. Rewrite this date in ISO format.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 2021 1999 2049. January February March April May June July
August September October November December. Monday Tuesday Wednesday Thursday Friday.
Instruction: summarise the text. Input: the weather is nice today. Output: nice weather.
system user assistant tool function name arguments result answer yes no true false.
"""


def train_tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=CHATML_TEMPLATE,
        model_max_length=2048,
    )


def tiny_config(arch: str, vocab_size: int, tokenizer: PreTrainedTokenizerFast):
    ids = dict(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
    )
    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            tie_word_embeddings=True, **ids,
        )
    if arch == "qwen2":
        return Qwen2Config(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            tie_word_embeddings=False, **ids,
        )
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=2048, **ids)
    raise UserError(f"unknown --arch '{arch}': choose one of {', '.join(ARCHS)}")


def build_tiny_model(out_dir: str | Path, arch: str = "llama", seed: int = 0) -> Path:
    """Write a small random model folder (config, safetensors, tokenizer, chat template)."""
    out_dir = Path(out_dir)
    if arch not in ARCHS:
        raise UserError(f"unknown --arch '{arch}': choose one of {', '.join(ARCHS)}")
    tokenizer = train_tiny_tokenizer()
    config = tiny_config(arch, len(tokenizer), tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    from tuneforge.models.load import quiet_transformers

    quiet_transformers()
    from tuneforge.atomic import atomic_dir

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir
