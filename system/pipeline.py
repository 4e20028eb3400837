"""A whole checkpoint loaded in one process: the sender's encoder, every receiver's adapter and frozen LLM.

Evaluation, calibration, the bench and the trainer run the serving code in-process through it: the same
selector, sharer, encoder, quantiser and adapters as the processes, without sockets. `slot_fn(name, path)` gives
one receiver's slot embeddings on a sender path: the sender's payload comes from the one dispatch the sender
process calls (`sender.paths.payloads`), the receiver's side from its adapter (`to_slots` for a latent,
`text_slot` for text). A sharer's readings are cached on disk, so every path reads each question once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from latentwire import checkpoint
from latentwire.data import Example, parse_context
from latentwire.lm import text_slots
from latentwire.models import LLM, load_llm
from latentwire.protocol import PATH_NAMES, dequantize, path_spec, quantize
from latentwire.receivers.adapter import PARTS, adapter_schemas, load_adapter
from latentwire.sender.encoder import load_encoder
from latentwire.sender.paths import payloads
from latentwire.sender.sharer import SharerEncoder


def docs_of(examples: Sequence[Example], context: str) -> list[tuple[str, tuple]]:
    """What the sender reads per example, exactly as it reads a served request: the question and the paragraphs
    parsed back from the context text a client sends (`data.parse_context`)."""
    return [(ex.question, parse_context(ex.context(context))) for ex in examples]


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class Wire:
    path: Path
    fingerprint: str
    config: dict
    encoder: SharerEncoder
    adapters: dict[str, torch.nn.Module]
    llms: dict[str, LLM] = field(default_factory=dict)

    @property
    def model_names(self) -> list[str]:
        return list(self.adapters)

    @property
    def m(self) -> int:
        return int(self.config["encoder"]["m"])

    @cached_property
    def parts(self) -> dict[str, str]:
        """The fingerprint of each part (the encoder, each adapter): `checkpoint.part_fingerprints`."""
        return checkpoint.part_fingerprints(self.path, self.config)

    def path_fingerprint(self, path: str, name: str | None = None) -> str:
        """What a sender path's answers depend on: the selection (evidence), the selection and the sharer's
        reading of it (relay), plus receiver `name`'s adapter (relay-tuned), the encoder and that adapter (latent,
        latent-closed; the whole checkpoint without a name). Cached rows of evidence and relay survive a change of
        the latent's knobs, and a receiver's rows survive the checkpoint's extension by another receiver."""
        spec = path_spec(path)
        selection = _short(json.dumps(self.encoder.selector.cfg.to_dict(), sort_keys=True))
        sharer = self.encoder.llm
        relay = "relay:" + self.encoder.cfg.reading_key(sharer.fingerprint, sharer.engine) + ":" + selection
        if not spec.reads:  # the selection alone fills the slot
            return f"{path}:" + selection
        if not spec.latent and not spec.tuned:  # the sharer's answer, read by every receiver as it is
            return relay
        if name is None:
            return f"{path}:{self.fingerprint}"
        if not spec.latent:  # the sharer's answer through the receiver's trained text prompt
            return f"{path}:" + _short(f"{relay}:{self.parts[name]}")
        engine = f":{sharer.engine}" if sharer.engine != "float32" else ""  # float32 keeps its keys
        return f"{path}:" + _short(f"{self.parts['encoder']}:{self.parts[name]}{engine}")

    @property
    def paths(self) -> tuple[str, ...]:
        """The paths this checkpoint can be measured on: all of them (the tuned ones equal their untuned twin
        where the checkpoint trained nothing)."""
        return PATH_NAMES

    def eval_args(
        self,
        name: str,
        path: str,
        context: str = "distractor",
        scheme: str | None = None,
        off: frozenset[str] = frozenset(),
    ) -> dict:
        """`evaluate()` arguments for receiver `name` on a path: the token budget M (token-budget), or the
        sender's slot function and the fingerprint its cached rows are keyed by (the sender paths); `off` (an
        ablation, see `slot_fn`) keys its rows apart."""
        if not path_spec(path).sender:
            return {"budget": self.m} if path_spec(path).budget else {}
        tag = self.path_fingerprint(path, name) + (f":{scheme}" if scheme is not None else "")
        tag += f":off={','.join(sorted(off))}" if off else ""
        return {"slot_fn": self.slot_fn(name, path, context, scheme, off), "slot_fingerprint": tag}

    @torch.no_grad()
    def encode(self, examples: Sequence[Example], context: str = "distractor") -> torch.Tensor:
        """(B, M, d_z) float latents, as the sender computes them."""
        return self.encoder.encode_docs(docs_of(examples, context))

    def slot_fn(
        self,
        name: str,
        path: str = "latent",
        context: str = "distractor",
        scheme: str | None = None,
        off: frozenset[str] = frozenset(),
    ) -> Callable[[Sequence[Example]], list[torch.Tensor]]:
        """Examples -> receiver `name`'s slot embeddings on a sender path (a latent through `scheme` if given).

        `off` names trained parts left out of a latent path, an ablation: `channel` (the sender's hidden
        channel: the closed-form code is sent) and any of the adapter's `PARTS`."""
        llm, adapter = self.llms[name], self.adapters[name]
        spec = path_spec(path)
        if not spec.sender:
            raise ValueError(f"{path} is not a sender path")
        unknown = sorted(set(off) - {"channel", *PARTS})
        if unknown or (off and not spec.latent):
            raise ValueError(f"{path}: cannot leave out {', '.join(unknown or sorted(off))}")
        # the closed-form code is the latent-closed path's payload: the channel left out, nothing else changed
        sent = "latent-closed" if "channel" in off else path
        adapter_off = frozenset(off) - {"channel"}

        @torch.no_grad()
        def fn(examples: Sequence[Example]) -> list[torch.Tensor]:
            out = payloads(self.encoder, sent, docs_of(examples, context))
            if not spec.latent:
                return [adapter.text_slot(s, spec.tuned) for s in text_slots(llm, out)]
            z = np.stack(out)
            if scheme is not None:
                z = np.stack([dequantize(quantize(zi, scheme)) for zi in z])
            slots = adapter.to_slots(torch.from_numpy(z).to(llm.device), tuned=spec.tuned, off=adapter_off)
            return [s.to(llm.model.dtype) for s in slots]

        return fn


def load_checkpoint(
    path: str | Path,
    models: Sequence[str] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    llms: dict[str, LLM] | None = None,
    reading_cache: bool = True,
    engine: str = "auto",
) -> Wire:
    """Load encoder + adapters + the frozen LLMs they were trained against (or the given `llms`), each loaded one
    run by `engine` (`latentwire.engine`: the serving processes' own by default).

    A sharer that is also a receiver (the default: Qwen reads and answers) is loaded once.
    """
    path = Path(path)
    cfg = checkpoint.read_json(path)  # parsed once, kept as read (part fingerprints hash its entries as written)
    typed = checkpoint.CheckpointConfig.from_dict(cfg, path, adapters=adapter_schemas())  # whole, before any load
    names = list(models or typed.models)
    llms = dict(llms or {})
    for name in names:
        if name not in typed.models:
            raise checkpoint.CheckpointError(
                f"{path} has no adapter for model {name!r} (it has: {', '.join(typed.models)})"
            )
        if name not in llms:
            llms[name] = load_llm(typed.models[name].spec, device=device, dtype=dtype, engine=engine)
    adapters = {n: load_adapter(path, n, llms[n], typed) for n in names}
    sharer_spec = typed.encoder.get("sharer")
    shared = next((llm for llm in llms.values() if llm.spec == sharer_spec), None)
    if shared is None and sharer_spec:
        shared = load_llm(sharer_spec, device=device, dtype=dtype, engine=engine)
    enc = load_encoder(path, device=str(next(iter(llms.values())).device), llm=shared, config=typed)
    if reading_cache:
        enc.use_cache()
    return Wire(path, checkpoint.fingerprint(path), cfg, enc, adapters, {n: llms[n] for n in names})
