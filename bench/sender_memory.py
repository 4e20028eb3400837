"""The sender's peak memory under the worst legal asks: `python -m latentwire.bench.sender_memory --ckpt C`.

Builds the sender as `latentwire sender` does (`open_sender`: the checkpoint's selector and sharer, on the serving
engine), answers one small ask (what a first ask loads), then encodes each worst ask inside the bounds
(`sender/bounds.py`) through `Sender.build_many`, the serving path (bounds, selection, the sharer's reading, the
latent, the frame), and prints JSON: the process's resident memory before, its peak while encoding (the kernel's
high-water mark, reset before each ask), the growth, and the design bound (`design_bound`) it must stay under.

The worst asks (`worst_asks`):
- `pairs`: 64 paragraphs filling the 65,536 characters (2,016 pairs for the selector: the most it scores), a
  question at its 4,096-character bound; the selection is a few of those short paragraphs.
- `reading`: 16 paragraphs of 4,095 characters (the most that fit the context with the longest paragraphs), a
  question at its bound, every character one token of the sharer or more, sized so that the sharer's prompt (the
  question and whatever the selector picks) is just under its 16,384-token cap (MAX_READ_TOKENS): the longest
  reading there is. 64 paragraphs of 4,096 characters are no legal ask (four times the context bound).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections.abc import Callable

from transformers import PretrainedConfig

from latentwire.checkpoint import DEFAULT_CKPT
from latentwire.data import parse_context
from latentwire.models import LLM
from latentwire.prompts import slot_ids, slot_text
from latentwire.protocol import Ask
from latentwire.sender.bounds import (
    MAX_CONTEXT_CHARS,
    MAX_PARAGRAPH_CHARS,
    MAX_PARAGRAPHS,
    MAX_QUESTION_CHARS,
    MAX_READ_TOKENS,
)
from latentwire.sender.process import Sender
from latentwire.sender.sharer import READ_BATCH_POSITIONS, READ_CHUNK, SharerEncoder

MiB = 1 << 20
# the sender's own memory besides the model's passes, per character of the ask (its paragraphs, sentences, the
# selector's word lists and sets, the tokenizer's encoding) and per selector pair (a row of features): generous
# for CPython objects, a few hundred bytes a word
PER_CHAR = 2048
PER_PAIR = 4096
SLACK = 64 * MiB  # the allocator's arenas and the Python objects of one encode, whatever the ask


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's high-water mark of resident memory (Linux: /proc/self/clear_refs); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak() -> int:
    """The high-water mark of resident memory, in bytes: `VmHWM`, which `_reset_peak` resets (getrusage's maxrss is
    not reset by it, and keeps what a thread that exited saw); maxrss where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def reading_bytes(
    c: PretrainedConfig, width: int, tokens: int, rows: int = 1, chunk: int = READ_CHUNK, new_tokens: int = 16
) -> int:
    """What one reading of `rows` prompts of `tokens` positions may add to memory, from the model's shapes (`c`,
    `width` bytes a weight): its KV cache; one span's (`chunk` positions a pass) attention mask against the prompt
    (a bool and a float copy) and per-head scores (should the attention kernel materialise them), activations
    (every projection and the MLP), and the states of every layer (kept for the hidden channel); the output head's
    logits. Activations are counted in float32 whatever the model's width."""
    layers, hidden = int(c.num_hidden_layers), int(c.hidden_size)
    heads = int(c.num_attention_heads)
    kv_heads = int(getattr(c, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(c, "head_dim", None) or hidden // heads)
    inter, vocab = int(c.intermediate_size), int(c.vocab_size)
    span, length = rows * min(chunk, tokens), tokens + new_tokens + 64  # + the chat template
    kv = 2 * layers * kv_heads * head_dim * rows * length * width
    attention = span * length * (1 + 4) + heads * span * length * 4
    activations = span * (8 * hidden + 3 * inter) * 4
    states = (layers + 1) * span * hidden * 4
    logits = rows * vocab * 4 * 4
    return kv + attention + activations + states + logits


def design_bound(c: PretrainedConfig, width: int) -> int:
    """The most the sender's encode of one legal ask may add to its memory, for a sharer of config `c` and `width`
    bytes a weight: the longest reading (a prompt at the sharer's token cap, MAX_READ_TOKENS; a batch of shorter
    ones holds at most READ_BATCH_POSITIONS padded positions, no more) plus the selection of the most pairs over
    the longest context (per character and per pair)."""
    pairs = MAX_PARAGRAPHS * (MAX_PARAGRAPHS - 1) // 2
    reading = reading_bytes(c, width, max(MAX_READ_TOKENS, READ_BATCH_POSITIONS))
    return reading + (MAX_CONTEXT_CHARS + MAX_QUESTION_CHARS) * PER_CHAR + pairs * PER_PAIR + SLACK


def llm_bound(llm: LLM) -> int:
    """`design_bound` for a loaded sharer."""
    return design_bound(llm.model.config, llm.model.get_input_embeddings().weight.element_size())


def _context(lines: int, chars: int, body: Callable[[int, int], str]) -> str:
    """`lines` paragraphs `Pi: ...` of exactly `chars` characters each (`body(i, n)`: n characters)."""
    out = []
    for i in range(lines):
        head = f"P{i}: "
        out.append(head + body(i, chars - len(head)))
    return "\n".join(out)


def _words(i: int, n: int) -> str:
    """English-like text that names other paragraphs (the selector's bridge features look for titles)."""
    text = " ".join(f"Ada met P{(i + k) % MAX_PARAGRAPHS} in {1800 + k}." for k in range(1, n // 10 + 2))
    return text[:n]


def worst_asks(encoder: SharerEncoder) -> dict[str, Ask]:
    """The two worst legal asks (module docstring), the second fitted to the sharer's tokenizer and selector."""
    question = ("Who met " + " ".join(f"P{k}" for k in range(MAX_PARAGRAPHS)) + " and when? ") * 64
    question = question[:MAX_QUESTION_CHARS]
    per = (MAX_CONTEXT_CHARS - (MAX_PARAGRAPHS - 1)) // MAX_PARAGRAPHS
    asks = {"pairs": Ask("worst-pairs", "bench", question, _context(MAX_PARAGRAPHS, per, _words), mode="latent")}

    lines = MAX_CONTEXT_CHARS // MAX_PARAGRAPH_CHARS
    longest = min(MAX_PARAGRAPH_CHARS, (MAX_CONTEXT_CHARS - (lines - 1)) // lines)

    def reading_ask(alphabet: str, chars: int) -> tuple[Ask, int]:
        def body(i: int, n: int) -> str:
            return (alphabet * (n // len(alphabet) + 1))[i % len(alphabet) :][:n]

        q = "7" * MAX_QUESTION_CHARS
        ask = Ask("worst-reading", "bench", q, _context(lines, chars, body), mode="latent")
        return ask, read_tokens(encoder, ask)

    best: tuple[int, Ask] | None = None
    for alphabet in ("0123456789", "éèàùâêîôûç", "的一是不了人我在有他"):  # one, two, three bytes a character
        lo, hi = 16, longest
        while lo < hi:  # the longest paragraphs whose reading stays within the cap
            mid = (lo + hi + 1) // 2
            if reading_ask(alphabet, mid)[1] <= MAX_READ_TOKENS:
                lo = mid
            else:
                hi = mid - 1
        ask, tokens = reading_ask(alphabet, lo)
        if tokens <= MAX_READ_TOKENS and (best is None or tokens > best[0]):
            best = (tokens, ask)
    assert best is not None
    asks["reading"] = best[1]
    return asks


def read_tokens(encoder: SharerEncoder, ask: Ask) -> int:
    """The sharer's prompt for `ask` in its tokens: the question and what the selector picks."""
    evidence = encoder.evidence((ask.question, parse_context(ask.context)))
    return len(slot_ids(encoder.llm.tokenizer, slot_text(ask.question, evidence)))


def measure(sender: Sender, asks: dict[str, Ask]) -> dict:
    """Each ask encoded through `Sender.build_many` (a small one first), with the process's memory around it."""
    warm = Ask("warm", "bench", "Who wrote it?", "Ada: She wrote the notes.\nBob: He did not.", mode="latent")
    (first,) = sender.build_many([warm])
    assert not isinstance(first, Exception), first
    base = _rss()
    out: dict = {"rss_before_mib": round(base / MiB, 1), "asks": {}}
    for name, ask in asks.items():
        if not _reset_peak():
            out["note"] = "no /proc/self/clear_refs: peaks are the process's since it started"
        t0 = time.perf_counter()
        (result,) = sender.build_many([ask])
        seconds, peak = time.perf_counter() - t0, _peak()
        if isinstance(result, Exception):
            raise RuntimeError(f"{name}: {type(result).__name__}: {result}")
        out["asks"][name] = {
            "context_chars": len(ask.context),
            "paragraphs": ask.context.count("\n") + 1,
            "question_chars": len(ask.question),
            "read_tokens": read_tokens(sender.encoder, ask),
            "frame_bytes": len(result[0]),
            "seconds": round(seconds, 2),
            "peak_mib": round(peak / MiB, 1),
            "growth_mib": round((peak - base) / MiB, 1),
        }
    out["growth_mib"] = max(a["growth_mib"] for a in out["asks"].values())
    out["peak_mib"] = max(a["peak_mib"] for a in out["asks"].values())
    out["design_bound_mib"] = round(llm_bound(sender.encoder.llm) / MiB, 1)
    return out


def tiny_sender() -> Sender:
    """The shipped design on a tiny random Qwen (`tiny-qwen`): a selector fitted on 60 train questions with the
    shipped budget (two paragraphs, three when unsure), the hidden channel on the sharer's last layer."""
    from latentwire.data import load_split
    from latentwire.sender.selector import Selector
    from latentwire.sender.sharer import SharerConfig
    from latentwire.tiny import tiny_llm

    selector = Selector.fit(load_split("train", limit=60))
    cfg = SharerConfig(
        sharer="tiny-qwen", m=4, d_z=32, topk=1, tokens_per_row=1, max_new_tokens=4, hidden_layer=-1, channel=True,
        selector=selector.cfg,
    )  # fmt: skip
    return Sender(SharerEncoder(cfg, llm=tiny_llm("qwen")), "f" * 64, cfg.m, "sender-memory")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=str(DEFAULT_CKPT))
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: every core, as `up` runs it)")
    ap.add_argument("--tiny", action="store_true", help="the tiny random sharer instead of the checkpoint's")
    args = ap.parse_args()
    from latentwire.device import set_threads
    from latentwire.sender.process import open_sender

    set_threads(args.threads)
    t0 = time.perf_counter()
    sender = tiny_sender() if args.tiny else open_sender(args.ckpt, "cpu", args.engine, "sender-memory")[0]
    load_s = time.perf_counter() - t0
    result = measure(sender, worst_asks(sender.encoder))
    what = "tiny-qwen" if args.tiny else args.ckpt
    print(json.dumps({"sender": what, "engine": sender.encoder.llm.engine, "load_s": round(load_s, 1), **result}))


if __name__ == "__main__":
    main()
