"""Tiny, randomly initialised models of each architecture family, with offline byte-level tokenizers.

Used by `latentwire smoke`, the unit tests and `bench --quick`: real architectures and real chat templates,
built in well under a second, no download. `FAMILIES` is the registry: a new family is one entry (its chat
special tokens and template, its transformers classes and the embedded pretrained model `smoke --real` uses),
and `tiny-<family>` then loads everywhere a model spec is taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from .llm import LLM, from_objects

_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_LLAMA3 = (
    "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@dataclass(frozen=True)
class Family:
    """What a tiny model of one architecture family needs, and its pretrained counterpart."""

    specials: tuple[str, ...]  # chat special tokens, eos among them
    template: str  # the family's chat template (Jinja)
    eos: str  # end of turn
    config: type[PretrainedConfig]
    model: type[PreTrainedModel]
    embedded: str  # the embedded pretrained model of this family (`latentwire smoke --real`)


FAMILIES: dict[str, Family] = {
    "llama": Family(
        specials=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        template=_LLAMA3,
        eos="<|eot_id|>",
        config=LlamaConfig,
        model=LlamaForCausalLM,
        embedded="llama",
    ),
    "qwen": Family(
        specials=("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
        template=_CHATML,
        eos="<|im_end|>",
        config=Qwen2Config,
        model=Qwen2ForCausalLM,
        embedded="qwen",
    ),
}


def family(name: str) -> Family:
    """The registry entry, or a clear error listing the families there are."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; choose one of {', '.join(FAMILIES)}") from None


def byte_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE with no merges (256 byte tokens) plus the family's chat special tokens."""
    fam = family(name)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=fam.eos,
        pad_token=fam.eos,
        additional_special_tokens=[s for s in fam.specials if s != fam.eos],
    )
    fast.chat_template = fam.template
    return fast


def tiny_llm(name: str, seed: int = 0, hidden: int = 64, layers: int = 2, init_std: float = 0.2) -> LLM:
    """A random model of family `name` (e.g. `llama`: LlamaForCausalLM, `qwen`: Qwen2ForCausalLM), ~100k parameters."""
    fam = family(name)
    tok = byte_tokenizer(name)
    cfg = fam.config(
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
    model = fam.model(cfg).float()
    return from_objects(f"tiny-{name}", model, tok, fingerprint=f"tiny-{name}-{seed}-{hidden}-{layers}-{init_std}")
