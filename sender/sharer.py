"""The `llm` encoder backbone: a frozen LLM (the sharer) reads the selected evidence and answers; the latent
carries what it computed.

Per question: the selector (`selector.py`) keeps a few paragraphs; the sharer reads `Question + evidence` in the
text path's own prompt and answers greedily, keeping its top-k next-token distribution at each step (and
optionally one layer's hidden states). The head writes step t as the mixture of the codes of
those k tokens (`latentwire.codebook`) plus, when the checkpoint trained one, the hidden channel: the sharer's
state that predicted step t, RMS-normalised and projected to d_z by a zero-initialised map (`HiddenChannel`), so
the latent carries what the sharer computed beyond its argmax. Rows after the answer's end stay zero: M x d_z,
one latent for every receiver; `latents(..., closed=True)` is the closed-form code alone (`latent-closed`).
The same reading gives the `relay` paths (the sharer's answer as text) and `evidence` (the selection as text),
so eval and bench read each question once (`ReadingCache`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from latentwire.codebook import mix, pack, vocabulary_codes
from latentwire.data import Paragraph
from latentwire.lm import generate
from latentwire.metrics import postprocess
from latentwire.models import LLM, cache_root, load_llm
from latentwire.prompts import PROMPT_VERSION, slot_ids, slot_text
from latentwire.protocol import ErrorCode

from .bounds import MAX_READ_TOKENS, Refused
from .selector import Selector, SelectorConfig

Doc = tuple[str, Sequence[Paragraph]]  # (question, context paragraphs): what the sender reads
READ_K = 8  # next-token candidates kept per step in a reading (the latent mixes the first `topk` of them)
# prompt positions the sharer reads per forward pass (`lm.Decoding`): what a reading holds besides its KV cache (the
# attention of a span against the prompt, the layers' states of a span) grows with this, not with the prompt. Every
# dev and val selection fits one span (at most 739 Qwen tokens), so their readings are computed as in one pass
READ_CHUNK = 1024
# padded positions (questions x the longest prompt) the sharer reads in one batch; a prompt over it is read alone
READ_BATCH_POSITIONS = 8192


@dataclass
class SharerConfig:
    """The `llm` encoder's config; the defaults are the shipped checkpoint's (docs/EXPERIMENTS.md E8, E17)."""

    backbone: str = "llm"
    sharer: str = "qwen"  # model spec of the frozen reader
    sharer_fingerprint: str = ""  # filled in when a checkpoint is written: serving refuses another model
    m: int = 8  # answer steps the latent carries = soft tokens
    max_new_tokens: int = 16  # the sharer's whole answer (what relay sends) may run longer than M steps
    d_z: int = 256
    topk: int = 1  # tokens mixed per step (at most READ_K)
    temperature: float = 1.0  # < 1 sharpens the sharer's distribution before mixing
    tokens_per_row: int = 2  # answer steps bound into one latent row (the latent carries m * tokens_per_row)
    code_seed: int = 0
    hidden_layer: int | None = -1  # read this layer's states along the answer (the hidden channel's input)
    channel: bool = True  # the trained hidden channel: the states, projected to d_z, added to the codes
    # the channel's norm per step is capped (smoothly) at this fraction of a code's (unit) norm: a larger one
    # would drown the codes, and a receiver drops the rows whose codes it no longer recognises
    channel_max: float = 0.5
    selector: SelectorConfig = field(default_factory=SelectorConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SharerConfig:
        d = dict(d)
        d["selector"] = SelectorConfig(**d.get("selector", {}))
        return cls(**d)

    def reading_key(self, sharer_fingerprint: str, engine: str = "float32") -> str:
        """What a cached reading depends on besides its input (question + evidence, the row's key): the sharer,
        the engine that ran it, the prompt, the decoding. Not the selector's weights: a reading is reused whenever
        the evidence is equal."""
        parts = {
            "sharer": sharer_fingerprint,
            "prompt": PROMPT_VERSION,
            "max_new_tokens": self.max_new_tokens,
            "read_k": READ_K,
            "hidden_layer": self.hidden_layer,
            "keyed_by": "question+evidence",
        }
        if engine != "float32":  # float32 readings keep the keys they were cached under
            parts["engine"] = engine
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class Reading:
    """What the sharer computed for one question."""

    evidence: str
    answer: str  # post-processed: what `relay` sends
    topk_ids: torch.Tensor  # (S, k), one row per answer step
    topk_logp: torch.Tensor  # (S, k)
    hidden: torch.Tensor | None = None

    def to_json(self) -> dict:
        d = {
            "evidence": self.evidence,
            "answer": self.answer,
            "ids": self.topk_ids.tolist(),
            "logp": [[round(float(v), 4) for v in row] for row in self.topk_logp],
        }
        if self.hidden is not None:  # fp16, base64: ~30 KB a question for a 0.5B sharer
            h = self.hidden.to(torch.float16).contiguous()
            d["hidden"] = {"shape": list(h.shape), "fp16": base64.b64encode(h.numpy().tobytes()).decode()}
        return d

    @classmethod
    def from_json(cls, d: dict, k: int) -> Reading:
        ids = torch.tensor(d["ids"], dtype=torch.long).reshape(-1, k)
        hidden = None
        if "hidden" in d:
            raw = np.frombuffer(base64.b64decode(d["hidden"]["fp16"]), dtype=np.float16)
            hidden = torch.from_numpy(raw.reshape(d["hidden"]["shape"]).astype(np.float32))
        logp = torch.tensor(d["logp"], dtype=torch.float32).reshape(-1, k)
        return cls(d["evidence"], d["answer"], ids, logp, hidden)


def _batches(sizes: Sequence[int], count: int, budget: int) -> list[list[int]]:
    """Indices of `sizes`, in order, in runs of at most `count` whose padded size (count x the longest) is at most
    `budget`; one over `budget` alone."""
    out: list[list[int]] = []
    for k, size in enumerate(sizes):
        run = out[-1] if out else None
        if run is not None and len(run) < count and (len(run) + 1) * max(size, *(sizes[j] for j in run)) <= budget:
            run.append(k)
        else:
            out.append([k])
    return out


def reading_input_key(question: str, evidence: str) -> str:
    """A reading depends on what the sharer reads alone: served and offline docs with the same selection share it."""
    return hashlib.sha256(json.dumps([question, evidence]).encode()).hexdigest()


class ReadingCache:
    """Sharer readings on disk (JSON lines, appended as produced: resumable), keyed by `reading_key`."""

    def __init__(self, key: str, k: int, directory: Path | None = None):
        self.path = (directory or cache_root() / "readings") / f"{key}.jsonl"
        self.k = k
        self.rows: dict[str, Reading] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    d = json.loads(line)
                    self.rows[d["key"]] = Reading.from_json(d, k)
                except (json.JSONDecodeError, KeyError, RuntimeError):
                    continue  # a line cut by an interruption is redone

    def get(self, question: str, evidence: str) -> Reading | None:
        return self.rows.get(reading_input_key(question, evidence))

    def put(self, question: str, r: Reading) -> None:
        key = reading_input_key(question, r.evidence)
        self.rows[key] = r
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"key": key, **r.to_json()}) + "\n")


class HiddenChannel(torch.nn.Module):
    """The sharer's states (S, H) -> (S, d_z): RMS-normalised, then a linear map that starts at zero (a freshly
    built channel adds nothing: training starts from the closed-form code), its norm per step smoothly capped at
    `max_norm` (`cap * tanh(|v| / cap)`), so the codes stay recognisable under it."""

    def __init__(self, hidden_size: int, d_z: int, max_norm: float = 0.5):
        super().__init__()
        self.proj = torch.nn.Linear(hidden_size, d_z, bias=False)
        torch.nn.init.zeros_(self.proj.weight)
        self.max_norm = max_norm

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h.float()
        v = self.proj(h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6))
        n = v.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        return v * (self.max_norm * torch.tanh(n / self.max_norm) / n)


class SharerEncoder(torch.nn.Module):
    """docs -> (B, M, d_z). The selector is fitted, the LLM frozen, the codes fixed; the hidden channel (when the
    config has one) is the sender's one trained part."""

    def __init__(self, cfg: SharerConfig, llm: LLM | None = None, device: str = "cpu", engine: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.llm = llm if llm is not None else load_llm(cfg.sharer, device=device, engine=engine)
        if cfg.sharer_fingerprint and cfg.sharer_fingerprint != self.llm.fingerprint:
            raise ValueError(
                f"this checkpoint's sharer is {cfg.sharer} (fingerprint {cfg.sharer_fingerprint[:12]}), "
                f"not the loaded model (fingerprint {self.llm.fingerprint[:12]})"
            )
        self.selector = Selector(cfg.selector)
        self.cache: ReadingCache | None = None
        if cfg.channel and cfg.hidden_layer is None:
            raise ValueError("encoder: channel needs hidden_layer (the sharer layer it reads)")
        self.channel = (
            HiddenChannel(self.llm.hidden_size, cfg.d_z, cfg.channel_max).to(self.llm.device) if cfg.channel else None
        )

    def use_cache(self, directory: Path | None = None) -> SharerEncoder:
        """Keep readings on disk (eval, bench, training): each question is read once per sharer and selector."""
        self.cache = ReadingCache(self.cfg.reading_key(self.llm.fingerprint, self.llm.engine), READ_K, directory)
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The hidden channel, if any: the selector's weights live in the config, the LLM is third-party, the codes
        are derived."""
        return {f"channel.{k}": v for k, v in self.channel.state_dict().items()} if self.channel is not None else {}

    @property
    def codes(self) -> torch.Tensor:
        return vocabulary_codes(self.llm.tokenizer, self.cfg.d_z, self.cfg.code_seed)

    def evidence(self, doc: Doc) -> str:
        q, paras = doc
        return self.selector.select(q, paras).text(paras)

    def prompt_ids(self, question: str, evidence: str) -> list[int]:
        """The sharer's prompt (the question and the selected evidence) in its tokens; Refused (`too_large`) over
        MAX_READ_TOKENS, before any reading: the sender's bounds are in characters, and a character may be several
        tokens."""
        ids = slot_ids(self.llm.tokenizer, slot_text(question, evidence))
        if len(ids) > MAX_READ_TOKENS:
            raise Refused(
                ErrorCode.TOO_LARGE,
                f"the question and its selected evidence are {len(ids):,} tokens of the sharer, over the sender's "
                f"cap of {MAX_READ_TOKENS:,}",
            )
        return ids

    @torch.no_grad()
    def read(
        self,
        docs: Sequence[Doc],
        batch_size: int = 4,
        progress: bool = False,
        evidence: Sequence[str] | None = None,
    ) -> list[Reading]:
        """The sharer's readings (from the cache when it has them); `evidence`: each doc's selection, when the
        caller made it already.

        Uncached questions are read `batch_size` at a time, similar lengths together, at most
        READ_BATCH_POSITIONS padded positions a batch: the greedy steps of a batch cost about what one question's
        do on a CPU, the prompts' padding stays small. A prompt over MAX_READ_TOKENS is Refused before any is read.
        """
        out: dict[int, Reading] = {}
        evidence = [self.evidence(d) for d in docs] if evidence is None else list(evidence)
        todo = []
        for i, d in enumerate(docs):
            hit = self.cache.get(d[0], evidence[i]) if self.cache is not None else None
            if hit is not None:
                out[i] = hit
            else:
                todo.append(i)
        todo.sort(key=lambda i: len(evidence[i]))
        ids = {i: self.prompt_ids(docs[i][0], evidence[i]) for i in todo}
        n = max(self.cfg.m, self.cfg.max_new_tokens)
        bar = tqdm(total=len(todo), disable=not progress or not todo, desc=f"sharer {self.llm.name}", unit="q")
        for idx in _batches([len(ids[i]) + n for i in todo], batch_size, READ_BATCH_POSITIONS):
            idx = [todo[k] for k in idx]
            ev = [evidence[i] for i in idx]
            slots = [self.llm.embed(torch.tensor(ids[i], device=self.llm.device)) for i in idx]
            gens = generate(
                self.llm, slots, n, topk=READ_K, hidden_layer=self.cfg.hidden_layer, prefill_chunk=READ_CHUNK
            )
            for i, e, g in zip(idx, ev, gens, strict=True):
                r = Reading(e, postprocess(g.text), g.topk_ids, g.topk_logp, g.hidden)
                out[i] = r
                if self.cache is not None:
                    self.cache.put(docs[i][0], r)
            bar.update(len(idx))
        bar.close()
        return [out[i] for i in range(len(docs))]

    def latents(self, readings: Sequence[Reading], closed: bool = False) -> torch.Tensor:
        """Readings -> (B, M, d_z): step t = mixture of the codes of the sharer's top-k (+ the hidden channel unless
        `closed`), `tokens_per_row` steps bound into each row; zero rows after the answer's end. Differentiable in
        the channel's weights (the trainer calls it)."""
        c = self.cfg
        codes = self.codes
        rows = []
        for r in readings:
            s = min(len(r.topk_ids), c.m * c.tokens_per_row)
            if not s:
                rows.append(torch.zeros(c.m, c.d_z))
                continue
            steps = mix(codes, r.topk_ids[:s, : c.topk], r.topk_logp[:s, : c.topk], c.temperature)
            if self.channel is not None and not closed:
                if r.hidden is None or len(r.hidden) < s:
                    raise ValueError("the hidden channel needs the sharer's states along the answer (hidden_layer)")
                steps = steps + self.channel(r.hidden[:s].to(self.channel.proj.weight.device)).cpu()
            rows.append(pack(steps, c.m, c.tokens_per_row, c.code_seed))
        return torch.stack(rows)

    def encode_docs(self, docs: Sequence[Doc]) -> torch.Tensor:
        """docs -> (B, M, d_z), the interface every encoder of `encoder.ENCODERS` shares."""
        return self.latents(self.read(docs))

    def forward(self, docs: Sequence[Doc]) -> torch.Tensor:
        return self.encode_docs(docs)
