"""Tiny, randomly initialised Llama and Qwen2 models with offline byte-level tokenizers.

Used by `latentwire smoke`, the unit tests and `bench --quick`: real architectures and real chat templates,
built in well under a second, no download.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from .models import LLM, from_objects

_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_LLAMA3 = (
    "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
FAMILIES = {
    "llama": (
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        _LLAMA3,
        "<|eot_id|>",
    ),
    "qwen": (["<|im_start|>", "<|im_end|>", "<|endoftext|>"], _CHATML, "<|im_end|>"),
}


def byte_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE with no merges (256 byte tokens) plus the family's chat special tokens."""
    specials, template, eos = FAMILIES[family]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos,
        pad_token=eos,
        additional_special_tokens=[s for s in specials if s != eos],
    )
    fast.chat_template = template
    return fast


def tiny_llm(family: str, seed: int = 0, hidden: int = 64, layers: int = 2, init_std: float = 0.2) -> LLM:
    """A random `llama` (LlamaForCausalLM) or `qwen` (Qwen2ForCausalLM) with ~100k parameters."""
    tok = byte_tokenizer(family)
    kw = dict(
        vocab_size=len(tok),
        initializer_range=init_std,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    cfg = LlamaConfig(**kw) if family == "llama" else Qwen2Config(**kw)
    model = (LlamaForCausalLM if family == "llama" else Qwen2ForCausalLM)(cfg).float()
    return from_objects(f"tiny-{family}", model, tok, fingerprint=f"tiny-{family}-{seed}-{hidden}-{layers}-{init_std}")
