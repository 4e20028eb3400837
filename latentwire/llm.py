"""The frozen LLM every component passes around: a model, its tokenizer and a fingerprint of its weights.

Kept apart from the loader (`models.py`) so the tiny random models (`tiny.py`) can build one without importing
the loader, and the loader can import them: the dependency goes one way, llm <- tiny <- models.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .prompts import PromptTemplate, build_template


@dataclass
class LLM:
    """A frozen causal LM with its tokenizer: the one object every component passes around."""

    spec: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def engine(self) -> str:
        """How its inference passes run (`engine.py`): what a reading or an answer depends on besides the weights."""
        return getattr(self.model, "engine", "float32")

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def name(self) -> str:
        """The spec's last path part: `llama` for the embedded model, `Llama-3.1-8B-Instruct` for a hub id."""
        return Path(self.spec).name or self.spec

    @cached_property
    def embed_rms(self) -> float:
        """RMS of the model's own input embeddings: the scale adapters match (SmolLM2 ~0.1, Qwen ~0.02)."""
        w = self.model.get_input_embeddings().weight.detach().float()
        return float(w.pow(2).mean().sqrt())

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids.to(self.device))

    @cached_property
    def template(self) -> PromptTemplate:
        """The prompt split at the slot (prompts.build_template), built once per loaded model."""
        return build_template(self.tokenizer)

    @cached_property
    def stop_ids(self) -> set[int]:
        """Token ids that end an answer: eos plus the chat template's end-of-turn marker."""
        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>", "</s>", "<|endoftext|>", "<end_of_turn>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid >= 0:
                ids.add(tid)
        return ids


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    model.eval()
    model.requires_grad_(False)
    return model


def from_objects(
    spec: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, fingerprint: str | None = None
) -> LLM:
    """Wrap already-built objects (tests build tiny random models this way)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if fingerprint is None:
        h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
        for name, p in model.state_dict().items():
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
        fingerprint = h.hexdigest()
    _fold_embed_scale(model)
    return LLM(spec, freeze(model), tokenizer, fingerprint)


def _fold_embed_scale(model: PreTrainedModel) -> None:
    """Make `get_input_embeddings().weight` the vectors the model reads, for families that scale them.

    Gemma multiplies its embedding table by sqrt(hidden) inside the embedding module, but adapters and soft
    prompts go in as `inputs_embeds` in the table's own units. Folding the scale into the table (and giving the
    tied output head its own unscaled copy) leaves every logit identical and puts every family on one footing.
    """
    emb = model.get_input_embeddings()
    scale = getattr(emb, "scalar_embed_scale", None)
    if scale is None or float(scale) == 1.0:
        return
    head = model.get_output_embeddings()
    if head is not None and head.weight is emb.weight:
        head.weight = torch.nn.Parameter(emb.weight.detach().clone(), requires_grad=False)
    with torch.no_grad():
        emb.weight.mul_(emb.embed_scale.to(emb.weight.dtype))
        emb.embed_scale.fill_(1.0)
    emb.scalar_embed_scale = 1.0
