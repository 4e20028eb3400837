"""The vocabulary-anchored interlingua: one code per token *string*, the same for every model family.

A token's surface string ("Ġparis" and "▁paris" both mean " paris") is hashed into a fixed pseudo-random
vector of width d_z (SHAKE-256 bytes, centred and scaled to unit norm). Any model computes the codes of its
own vocabulary from its tokenizer alone, so nothing is stored, nothing is trained, and a new family joins by
reading its own vocabulary. In d_z = 256 dimensions random codes are nearly orthogonal (|cos| < 0.35 for every
pair among 10^5 strings), so a receiver recovers the strings of a mixture by nearest codes, and int4 rounding
moves a code far less than the distance to any other.

The sender writes each answer step as a mixture of the codes of the sharer's top-k next tokens (its
distribution, not only its argmax); each receiver's adapter snaps it back onto its own embeddings
(`receivers/adapter.py`). An all-zero row means "no token" (the sharer's answer ended). A row may carry
several consecutive steps at once (`tokens_per_row`): step j of a row is *bound* to its place by a fixed
signed permutation before the steps are summed, and a receiver unbinds each place and snaps it separately;
near-orthogonal codes keep the superposed steps apart (each keeps cosine ~1/sqrt(n) with its own code).
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

CODE_VERSION = 1
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def token_strings(tokenizer: PreTrainedTokenizerBase) -> list[str | None]:
    """The surface string of every token id; None for special tokens, byte pieces of a split character, and
    tokens whose string another token already has (one token per string, so a code names one embedding)."""
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.get_vocab()
    out: list[str | None] = [None] * max(len(tokenizer), max(vocab.values()) + 1)
    owner: dict[str, tuple[bool, int]] = {}  # string -> (is a byte piece, id) of the token that keeps it
    for piece, i in vocab.items():
        if i in special:
            continue
        s = tokenizer.convert_tokens_to_string([piece])
        if not s or "\ufffd" in s:
            continue
        # one token per string: a byte-fallback piece ("<0x2C>") never shadows the real token (",") whose
        # embedding the model learned; otherwise the lower id keeps it
        rank = (_BYTE_PIECE.fullmatch(piece) is not None, i)
        if s in owner:
            if rank > owner[s]:
                continue
            out[owner[s][1]] = None
        owner[s] = rank
        out[i] = s
    return out


def string_code(s: str, d_z: int, seed: int = 0) -> np.ndarray:
    """The unit-norm code of one string (deterministic across machines and processes)."""
    raw = hashlib.shake_256(f"{seed}\x00{s}".encode()).digest(d_z)
    v = np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 127.5
    return v / np.linalg.norm(v)


def code_table(strings: list[str | None], d_z: int, seed: int = 0) -> torch.Tensor:
    """(V, d_z) codes of a vocabulary's strings; zero rows where a token has no string."""
    table = np.zeros((len(strings), d_z), dtype=np.float32)
    for i, s in enumerate(strings):
        if s is not None:
            table[i] = string_code(s, d_z, seed)
    return torch.from_numpy(table)


@lru_cache(maxsize=8)
def _tokenizer_codes(tokenizer: PreTrainedTokenizerBase, d_z: int, seed: int) -> torch.Tensor:
    return code_table(token_strings(tokenizer), d_z, seed)


def vocabulary_codes(tokenizer: PreTrainedTokenizerBase, d_z: int, seed: int = 0) -> torch.Tensor:
    """The code table of a tokenizer's vocabulary, computed once per process (~1 s for 150k tokens)."""
    return _tokenizer_codes(tokenizer, d_z, seed)


def mix(codes: torch.Tensor, ids: torch.Tensor, logp: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Answer steps -> latent rows: (S, k) top-k ids and log-probs -> (S, d_z) mixtures of their codes.

    Weights are the top-k distribution renormalised (sharpened by `temperature` < 1) over tokens that have a
    string; a step whose candidates have none gives a zero row.
    """
    c = codes[ids]  # (S, k, d_z)
    has = c.abs().sum(-1) > 0
    w = (logp.float() / max(temperature, 1e-6)).masked_fill(~has, float("-inf")).softmax(-1).nan_to_num(0.0)
    return (w.unsqueeze(-1) * c).sum(1)


@lru_cache(maxsize=32)
def _binding(place: int, d_z: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed signed permutation of a place in a row; place 0 is the identity (one token per row)."""
    if place == 0:
        return torch.arange(d_z), torch.ones(d_z)
    g = torch.Generator().manual_seed(1_000_003 * (seed + 1) + place)
    return torch.randperm(d_z, generator=g), torch.randint(0, 2, (d_z,), generator=g).float() * 2 - 1


def bind(v: torch.Tensor, place: int, seed: int = 0) -> torch.Tensor:
    """Move codes (..., d_z) to `place` of a row."""
    perm, sign = _binding(place, v.shape[-1], seed)
    return (v * sign.to(v)).index_select(-1, perm.to(v.device))


def unbind(z: torch.Tensor, place: int, seed: int = 0) -> torch.Tensor:
    """The inverse of `bind`: what a row holds at `place`, back in code space."""
    perm, sign = _binding(place, z.shape[-1], seed)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    return z.index_select(-1, inv.to(z.device)) * sign.to(z)


def pack(steps: torch.Tensor, m: int, per_row: int, seed: int = 0) -> torch.Tensor:
    """(S, d_z) step vectors -> (m, d_z) latent rows, `per_row` consecutive steps bound into each row."""
    z = steps.new_zeros(m, steps.shape[-1])
    for t in range(min(steps.shape[0], m * per_row)):
        z[t // per_row] += bind(steps[t], t % per_row, seed)
    return z
