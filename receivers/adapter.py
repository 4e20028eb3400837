"""Receiver-side adapters: interlingua soft tokens (M, d_z) -> one model's slot embeddings.

`ADAPTERS` is the registry of adapter kinds, keyed by the config's `kind`. The one kind is `codebook`, for
the vocabulary-anchored interlingua (`latentwire.codebook`):
- **The closed form** (no training): each row is unbound into its steps and each step snapped onto this model's
  own token embeddings, a softmax (temperature `tau`) over the `nearest` token codes most similar to it; zero rows
  (the sharer's answer ended) are dropped.
- **No string lost** (`lexicon`): a step whose best code is a string of the sharer's vocabulary that is no single
  token here is spelled with this model's own pieces, so the latent keeps every string relay keeps.
- **Trained parts**, all starting at the closed form's behaviour or a plain prompt: a soft prompt of
  `prompt_len` vectors before the slot (prompt tuning), a low-rank residual of rank `rank` read from each step's
  raw vector (zero-initialised: it reads what the snap cannot, such as the sender's hidden channel), and tau.
  The text twin of the same prompt (`text_prompt`) serves `relay-tuned`, the baseline that gets the same training
  on relay's text.
`to_slots((B, M, d_z))` is the one latent-to-slot step every path uses; `text_slot` the text twin's. `off` names
parts (`PARTS`) that act as untrained, or absent for the lexicon: the trainer's ablations measure what each carries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentwire import checkpoint
from latentwire.codebook import code_table, token_strings, unbind, vocabulary_codes

# what `off` may name: the trained parts (tau: back to the config's value), and the closed form's lexicon
PARTS = ("prompt", "residual", "tau", "lexicon")
PROMPT_INIT = " Short answer:"  # the soft prompts start as this phrase's embeddings, tiled to `prompt_len`


@dataclass
class CodebookAdapterConfig:
    kind: str = "codebook"
    d_z: int = 256
    hidden_size: int = 576
    tau: float = 20.0  # softmax temperature over cosine similarities (high = the nearest token alone)
    nearest: int = 4  # candidate tokens per row
    min_cos: float = 0.35  # rows matching no code of this vocabulary better than chance are dropped
    code_seed: int = 0
    tokens_per_row: int = 1  # places bound into one row by the sender (latentwire.codebook.pack)
    lexicon: str = ""  # a model spec (the sharer) whose strings this receiver spells when it has no such token
    prompt_len: int = 0  # trained soft prompt before the slot (and its text twin for relay-tuned)
    rank: int = 0  # trained low-rank residual on each step's embedding, read from the step's raw vector

    def to_dict(self) -> dict:
        """The fields; the trained parts and the lexicon only when set, so a closed-form adapter's config (and so
        its part fingerprint and the rows cached under it) does not depend on parts it does not have."""
        return {k: v for k, v in asdict(self).items() if k not in _NEUTRAL or v != _NEUTRAL[k]}


_NEUTRAL = {"lexicon": "", "prompt_len": 0, "rank": 0}


@lru_cache(maxsize=4)
def _lexicon(spec: str, d_z: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """The strings of `spec`'s vocabulary and their codes (the sharer's side of "no string lost")."""
    from latentwire.models import load_tokenizer

    strings = sorted({s for s in token_strings(load_tokenizer(spec)) if s is not None})
    return strings, code_table(list(strings), d_z, seed)


class CodebookAdapter(nn.Module):
    """Snap each latent step onto this model's own embeddings; add the trained parts (see the module docstring)."""

    def __init__(self, cfg: CodebookAdapterConfig, llm: Any):
        super().__init__()
        self.cfg = cfg
        self.log_tau = nn.Parameter(torch.tensor(float(cfg.tau)).log())
        own = vocabulary_codes(llm.tokenizer, cfg.d_z, cfg.code_seed)
        embed = llm.model.get_input_embeddings().weight
        # the frozen model's tables are referenced, not registered: a checkpoint never holds third-party weights
        # (a tuple, so nn.Module does not adopt the model's embedding Parameter)
        self._tables = (own, embed)
        self._tokenizer = llm.tokenizer
        self._extra: tuple[list[str], torch.Tensor] = ([], own.new_zeros(0, cfg.d_z))
        if cfg.lexicon:
            strings, codes = _lexicon(cfg.lexicon, cfg.d_z, cfg.code_seed)
            mine = set(token_strings(llm.tokenizer))
            keep = [i for i, s in enumerate(strings) if s not in mine]
            self._extra = ([strings[i] for i in keep], codes[keep])
        self._spelled: dict[int, torch.Tensor] = {}
        if cfg.prompt_len:
            init = self._prompt_init(llm, cfg.prompt_len)
            self.prompt = nn.Parameter(init.clone())
            self.text_prompt = nn.Parameter(init.clone())
        if cfg.rank:
            self.down = nn.Linear(cfg.d_z, cfg.rank, bias=False)
            self.up = nn.Linear(cfg.rank, cfg.hidden_size, bias=False)
            nn.init.normal_(self.down.weight, std=cfg.d_z**-0.5)
            nn.init.zeros_(self.up.weight)  # starts as the closed form

    @staticmethod
    def _prompt_init(llm: Any, n: int) -> torch.Tensor:
        ids = llm.tokenizer(PROMPT_INIT, add_special_tokens=False)["input_ids"] or [0]
        ids = (ids * n)[:n]
        return llm.embed(torch.tensor(ids, device=llm.device)).detach().float().cpu()

    def _spell(self, i: int) -> torch.Tensor:
        """This model's own pieces of the sharer's extra string i (their embeddings)."""
        if i not in self._spelled:
            ids = self._tokenizer(self._extra[0][i], add_special_tokens=False)["input_ids"]
            embed = self._tables[1]
            self._spelled[i] = embed[torch.tensor(ids, dtype=torch.long, device=embed.device)].detach()
        return self._spelled[i]

    def forward(self, z: torch.Tensor, tuned: bool = True, off: frozenset[str] = frozenset()) -> torch.Tensor:
        """(M, d_z) -> (L, hidden) in answer order: the prompt (tuned), then each kept step's embedding (one, or
        a spelled string's pieces) plus the residual (tuned); parts named in `off` are left out."""
        on = {p for p in PARTS if p not in off and (tuned or p == "lexicon")}
        codes, embed = self._tables
        z = z.float().to(codes.device)
        n, seed = self.cfg.tokens_per_row, self.cfg.code_seed
        steps = torch.stack([unbind(z, j, seed) for j in range(n)], 1).flatten(0, 1)  # row-major: step order
        norm = steps.norm(dim=-1, keepdim=True)
        unit = steps / norm.clamp(min=1e-8)
        top = (unit @ codes.T).topk(self.cfg.nearest, dim=-1)
        best = top.values[:, 0]
        extra_best, extra_idx = best.new_full(best.shape, -2.0), torch.zeros_like(top.indices[:, 0])
        if len(self._extra[0]) and "lexicon" in on:
            extra_best, extra_idx = (unit @ self._extra[1].T).max(-1)
        keep = (norm.squeeze(-1) > 1e-6) & (torch.maximum(best, extra_best) >= self.cfg.min_cos)
        tau = (
            self.log_tau.exp() if "tau" in on else torch.tensor(self.cfg.tau)
        )  # the closed form starts at the config's
        w = (tau * top.values).softmax(-1)
        own = (w.unsqueeze(-1).to(embed) * embed[top.indices.to(embed.device)]).sum(1)  # (S, hidden)
        resid = self.up(self.down(steps.to(self.up.weight))) if "residual" in on and self.cfg.rank else None
        pieces = [self.prompt.to(embed)] if "prompt" in on and self.cfg.prompt_len else []
        for t in torch.nonzero(keep).flatten().tolist():
            e = self._spell(int(extra_idx[t])) if extra_best[t] > best[t] else own[t : t + 1]
            pieces.append(e + resid[t].to(e) if resid is not None else e)
        return torch.cat(pieces, 0) if pieces else embed.new_zeros(0, embed.shape[1])

    def to_slots(self, z: torch.Tensor, tuned: bool = True, off: frozenset[str] = frozenset()) -> list[torch.Tensor]:
        """(B, M, d_z) -> each row's slot; `tuned=False` is the closed form alone (`latent-closed`), `off` leaves
        the parts it names out (an ablation)."""
        unknown = sorted(set(off) - set(PARTS))
        if unknown:
            raise ValueError(f"adapter: unknown part {unknown[0]!r}; choose from {', '.join(PARTS)}")
        return [self(row, tuned, off) for row in z]

    def text_slot(self, emb: torch.Tensor, tuned: bool = True) -> torch.Tensor:
        """A text path's slot embeddings (L, hidden), behind the trained text prompt when `tuned` (relay-tuned)."""
        if not (tuned and self.cfg.prompt_len):
            return emb
        return torch.cat([self.text_prompt.to(emb), emb], 0)

    @property
    def trained_parts(self) -> list[str]:
        """Which trained parts this adapter has (besides tau)."""
        return [p for p, on in (("prompt", self.cfg.prompt_len), ("residual", self.cfg.rank)) if on]


ADAPTERS: dict[str, tuple[type, type]] = {
    "codebook": (CodebookAdapterConfig, CodebookAdapter),
}


def adapter_schemas() -> dict[str, type]:
    """Each adapter kind's config dataclass (`ADAPTERS`): what a checkpoint's adapter configs are validated against
    at load, before any model loads (`latentwire.checkpoint.load_config(..., adapters=)`)."""
    return {kind: entry[0] for kind, entry in ADAPTERS.items()}


def build_adapter(cfg: dict, llm: Any) -> nn.Module:
    """An adapter from its config dict (the `kind` field picks the family)."""
    kind = cfg.get("kind")
    if kind not in ADAPTERS:
        raise ValueError(f"unknown adapter kind {kind!r}; choose one of {', '.join(ADAPTERS)}")
    config_cls, module_cls = ADAPTERS[kind]
    return module_cls(config_cls(**cfg), llm)


def load_adapter(path: str | Path, name: str, llm: Any, cfg: checkpoint.CheckpointConfig | None = None) -> nn.Module:
    """A receiver's half of a checkpoint: the adapter for `name`, checked against the model it will feed (`cfg`:
    the checkpoint's config, if the caller has read it already: a process parses config.json once)."""
    path = Path(path)
    cfg = cfg or checkpoint.load_config(path)
    checkpoint.check_model(path, name, llm, cfg)
    try:
        ad = build_adapter(cfg.models[name].adapter, llm)
    except (TypeError, ValueError) as e:
        raise checkpoint.CheckpointError(f"{path}: adapter {name!r}: {e}") from None
    sent = int(cfg.encoder.get("tokens_per_row", 1))
    if isinstance(ad, CodebookAdapter) and ad.cfg.tokens_per_row != sent:
        raise checkpoint.CheckpointError(
            f"{path}: adapter {name!r} unbinds {ad.cfg.tokens_per_row} steps per row, the sender binds {sent}"
        )
    checkpoint.load_strict(ad, checkpoint.weights(path, f"adapter.{name}."), f"{path}: adapter {name!r}")
    return ad.to(llm.device).eval()
