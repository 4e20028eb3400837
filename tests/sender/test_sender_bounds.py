"""The sender bounds what one ask may cost before any work: an empty context is a one-line `bad_request`, a context
over a size bound a prompt `too_large` (never minutes of selection or gigabytes of reading), an ask past its
deadline is dropped unread, and the worst context inside the bounds is served."""

from __future__ import annotations

import time

import pytest

from latentwire.data import load_split, parse_context
from latentwire.protocol import Ask, ErrorReply, Sent, encode_frame
from latentwire.sender.bounds import (
    MAX_CONTEXT_CHARS,
    MAX_PARAGRAPH_CHARS,
    MAX_PARAGRAPHS,
    MAX_QUESTION_CHARS,
    MAX_READ_TOKENS,
)
from latentwire.sender.process import Sender, _handle_many
from latentwire.sender.selector import Selector
from latentwire.sender.sharer import SharerConfig, SharerEncoder


@pytest.fixture(scope="module")
def sender(tiny_qwen) -> Sender:
    selector = Selector.fit(load_split("train", limit=60), paragraphs=2, unsure_below=0.0)
    cfg = SharerConfig(
        sharer="tiny-qwen", m=4, d_z=32, topk=1, tokens_per_row=1, max_new_tokens=4, hidden_layer=None,
        channel=False, selector=selector.cfg,
    )  # fmt: skip
    return Sender(SharerEncoder(cfg, llm=tiny_qwen), "f" * 64, 4, "s-test")


def _serve(sender: Sender, context: str, mode: str = "latent", question: str = "Who wrote it?") -> Sent | ErrorReply:
    (reply,) = _handle_many(sender, [encode_frame(Ask("r-1", "arb", question, context, mode=mode))], [])
    return reply


@pytest.mark.parametrize("mode", ["latent", "relay", "evidence"])
@pytest.mark.parametrize("context", ["", " \n\n "])
def test_an_empty_context_on_a_sender_path_is_a_bad_request(sender, mode, context):
    reply = _serve(sender, context, mode)
    assert isinstance(reply, ErrorReply) and reply.code == "bad_request" and reply.rid == "r-1"
    assert "no paragraph" in reply.message and "\n" not in reply.message


@pytest.mark.parametrize(
    "context",
    [
        "Ada Lovelace wrote the notes. " * 3334,  # 100 KB in one paragraph
        "\n".join(f"Title {i}: Ada Lovelace wrote note {i}." for i in range(5000)),  # 5,000 paragraphs
        "Notes: " + "Ada wrote them. " * (MAX_PARAGRAPH_CHARS // 16 + 1),  # one paragraph just over its bound
    ],
    ids=["100KB", "5000-paragraphs", "long-paragraph"],
)
def test_a_context_over_a_bound_is_refused_before_any_work(sender, context, monkeypatch):
    read = []
    monkeypatch.setattr(sender.encoder, "read", lambda docs, **kw: read.append(docs))
    t0 = time.perf_counter()
    reply = _serve(sender, context)
    assert time.perf_counter() - t0 < 1.0
    assert isinstance(reply, ErrorReply) and reply.code == "too_large" and reply.rid == "r-1", reply
    assert "sender's bound" in reply.message and "\n" not in reply.message
    assert not read


def test_the_worst_context_inside_the_bounds_is_served_promptly(sender):
    """MAX_PARAGRAPHS paragraphs filling MAX_CONTEXT_CHARS: every pair scored, the selection read, a latent out."""
    size = MAX_CONTEXT_CHARS // MAX_PARAGRAPHS - 1  # with its newline
    body = "Ada Lovelace wrote the notes on the engine. "
    lines = [(f"Title {i}: " + body * size)[:size] for i in range(MAX_PARAGRAPHS)]
    context = "\n".join(lines)
    assert len(context) <= MAX_CONTEXT_CHARS
    t0 = time.perf_counter()
    sel = sender.encoder.selector.select("Who wrote the notes?", parse_context(context))
    assert len(sel.indices) == 2 and time.perf_counter() - t0 < 10.0  # 2,016 pairs: seconds at most on a slow core
    reply = _serve(sender, context)
    assert isinstance(reply, Sent) and reply.rid == "r-1", reply


def test_an_ask_past_its_deadline_is_dropped_unread(sender, monkeypatch):
    """Nothing read, nothing sent: an `expired` error at once, counted for the heartbeats."""
    read = []
    monkeypatch.setattr(sender, "build_many", lambda asks: read.append(asks) or [])
    before = sender.expired
    late = Ask("r-late", "arb", "Who wrote it?", "Ada: She wrote it.", mode="latent", deadline=time.time() - 0.1)
    (reply,) = _handle_many(sender, [encode_frame(late)], [])
    assert isinstance(reply, ErrorReply) and reply.code == "expired" and reply.rid == "r-late"
    assert sender.expired == before + 1 and read == []


@pytest.mark.parametrize("mode", ["latent", "relay", "evidence"])
def test_a_question_over_its_bound_is_refused_before_any_work(sender, mode, monkeypatch):
    read = []
    monkeypatch.setattr(sender.encoder, "read", lambda docs, **kw: read.append(docs))
    reply = _serve(sender, "Ada: She wrote it.", mode, question="Who? " * (MAX_QUESTION_CHARS // 5 + 1))
    assert isinstance(reply, ErrorReply) and reply.code == "too_large" and reply.rid == "r-1", reply
    assert "question of" in reply.message and "sender's bound" in reply.message and not read


def test_a_selection_over_the_sharer_s_token_cap_is_refused_unread_and_the_batch_read(sender, monkeypatch):
    """Characters within every bound can still be more tokens than the cap (here three bytes, three tokens of the
    tiny byte-level sharer, a character): that ask is refused `too_large` before any forward pass; the ask beside
    it is read, in one batch of its own."""
    import latentwire.sender.sharer as sharer

    paragraph = "Note: " + "日" * (MAX_PARAGRAPH_CHARS - 6)  # three bytes, three tokens a character
    dense = "\n".join([paragraph] * 3)
    assert len(dense) <= MAX_CONTEXT_CHARS and len(paragraph.encode()) > MAX_READ_TOKENS // 2  # any two: over
    real, calls = sharer.generate, []

    def counted(llm, slots, *a, **k):
        calls.append(len(slots))
        return real(llm, slots, *a, **k)

    monkeypatch.setattr(sharer, "generate", counted)
    asks = [Ask("r-big", "arb", "Who wrote it?", dense), Ask("r-ok", "arb", "Who wrote it?", "Ada: She wrote it.")]
    replies = {r.rid: r for r in _handle_many(sender, [encode_frame(a) for a in asks], [])}
    big = replies["r-big"]
    assert isinstance(big, ErrorReply) and big.code == "too_large", big
    assert f"over the sender's cap of {MAX_READ_TOKENS:,}" in big.message and "\n" not in big.message
    assert isinstance(replies["r-ok"], Sent) and calls == [1]
