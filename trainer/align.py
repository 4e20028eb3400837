"""Token alignment: cheap, LLM-free signals that make the latent readable as the receivers' own tokens.

A frozen chat model copies well: a prompt whose slot holds the answer's own token embeddings tends to get that
answer back. So soft token j of each model's adapter is trained to be nearest (cosine, over that model's whole
input-embedding table) to the embedding of the j-th answer token: a cross-entropy over the vocabulary with the
embedding table as output layer. (Plain cosine regression toward the target embedding was tried first and only
learned the mean answer direction: EXPERIMENTS E3.) No LLM forward pass is needed, so a step costs a fraction
of the answer loss's and many steps fit before (`align_steps`) and beside (`align_weight`) it.

`align_target="question"` asks instead for the question's first M tokens (an ICAE-style reconstruction of
what the token-budget baseline sends), which needs no question answering from the reader, only copying.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from latentwire.models import LLM

TEMPERATURE = 0.05  # cosine logits / T: a margin of 0.1 in cosine is a factor e^2 in probability
_TABLES: dict[int, torch.Tensor] = {}


def unit_table(llm: LLM) -> torch.Tensor:
    """The model's input-embedding table, rows L2-normalised (float32, computed once per model)."""
    key = id(llm.model)
    if key not in _TABLES:
        with torch.no_grad():
            _TABLES[key] = F.normalize(llm.model.get_input_embeddings().weight.float(), dim=-1)
    return _TABLES[key]


def slot_targets(seqs: Sequence[Sequence[int]], m: int, skip: int | None = None) -> torch.Tensor:
    """(B, M) token ids: the first M tokens of each sequence (`skip`, e.g. end-of-turn, left out), -100 after."""
    out = torch.full((len(seqs), m), -100, dtype=torch.long)
    for i, seq in enumerate(seqs):
        ids = [t for t in seq if t != skip][:m]
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def token_logits(llm: LLM, soft: torch.Tensor) -> torch.Tensor:
    """(..., H) soft tokens -> (..., V) cosine logits against the model's embedding table."""
    table = unit_table(llm).to(soft.device)
    return F.normalize(soft.float(), dim=-1) @ table.T / TEMPERATURE


def align_loss(llm: LLM, soft: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each soft token's nearest-embedding distribution against its answer token."""
    targets = targets.to(soft.device)
    valid = targets != -100
    if not valid.any():
        return soft.sum() * 0.0
    return F.cross_entropy(token_logits(llm, soft[valid]), targets[valid])


@torch.no_grad()
def slot_accuracy(llm: LLM, soft: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of target slots whose soft token is nearest (cosine, whole vocabulary) to its target token."""
    valid = targets != -100
    nearest = token_logits(llm, soft[valid.to(soft.device)]).argmax(-1).cpu()
    return float((nearest == targets[valid]).float().mean()) if valid.any() else 0.0
