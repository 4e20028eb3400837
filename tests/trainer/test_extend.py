"""A third model family joins a checkpoint without retraining the others (trainer/extend.py), on tiny models:
a Gemma3-architecture receiver with a SentencePiece-style vocabulary (`▁` for spaces, byte fallback)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

from latentwire import checkpoint
from latentwire.codebook import code_table, string_code, token_strings
from latentwire.evaluate import evaluate
from latentwire.models import EMBEDDED, GEMMA_CHAT_TEMPLATE, LLM, _ensure_chat_template, from_objects
from latentwire.protocol import Ask, decode_frame
from latentwire.receivers.adapter import load_adapter
from latentwire.receivers.receiver import Receiver
from latentwire.sender.process import Sender
from latentwire.system.pipeline import load_checkpoint
from latentwire.trainer.extend import ExtendRecipe, extend

_WORDS = ("▁Paris", "▁the", "▁of", "▁and", "▁in", "▁a", "▁is", "▁was")


def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    """Gemma-style: `▁` marks a space, every byte has a `<0xNN>` fallback piece, a few whole words."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)] + ["▁"] + [chr(c) for c in range(33, 127)] + list(_WORDS)
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = []
    for w in _WORDS:  # left-to-right merges that build each whole word from its characters
        for i in range(2, len(w) + 1):
            merges.append((w[: i - 1], w[i - 1]))
            vocab.setdefault(w[:i], len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )
    fast.chat_template = GEMMA_CHAT_TEMPLATE  # the embedded gemma's own
    return fast


def tiny_gemma(seed: int = 0) -> tuple[LLM, Gemma3ForCausalLM]:
    """A random Gemma3 (scaled input embeddings, tied head); returns the LLM and an untouched copy."""
    tok = sentencepiece_tokenizer()
    cfg = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=64,
        max_position_embeddings=32768,
        initializer_range=0.2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(cfg).float().eval()
    ref = Gemma3ForCausalLM(cfg).float().eval()
    ref.load_state_dict(model.state_dict())
    return from_objects("tiny-gemma", model, tok, fingerprint=f"tiny-gemma-{seed}"), ref


@pytest.fixture(scope="module")
def gemma() -> tuple[LLM, Gemma3ForCausalLM]:
    return tiny_gemma()


@pytest.fixture(scope="module")
def parent(tiny_trained):
    return tiny_trained


@pytest.fixture(scope="module")
def child(parent, gemma, tmp_path_factory):
    ckpt, llms = parent
    out = tmp_path_factory.mktemp("child") / "ckpt"
    recipe = ExtendRecipe(
        model="tiny-gemma",
        eval_n=4,
        grid=[(50.0, 1)],
        device="cpu",
        dtype="float32",
        steps=2,
        train_limit=8,
        run_dir=str(tmp_path_factory.mktemp("extend-run")),
        eval_every=0,
    )
    return extend(recipe, ckpt, out, llms={**llms, "tiny-gemma": gemma[0]}, log=lambda s: None)


def test_sentencepiece_strings_share_codes_with_byte_level(gemma, tiny_qwen):
    llm = gemma[0]
    strings = token_strings(llm.tokenizer)
    ids = llm.tokenizer.convert_tokens_to_ids(["▁Paris", "A", "<0xC3>", "<end_of_turn>", "<0x41>", "<0x0A>"])
    assert strings[ids[0]] == " Paris" and strings[ids[1]] == "A"
    assert strings[ids[2]] is None and strings[ids[3]] is None  # half a character, a special token
    # one token per string: the byte piece <0x41> yields "A" to the real token; a byte alone keeps its string
    assert strings[ids[4]] is None and strings[ids[5]] == "\n"
    codes = code_table(strings, 32)
    assert torch.allclose(codes[ids[0]], torch.from_numpy(string_code(" Paris", 32)))
    qwen_a = tiny_qwen.tokenizer.convert_tokens_to_ids("A")  # byte-level "A" and SentencePiece "A": one code
    assert torch.equal(code_table(token_strings(tiny_qwen.tokenizer), 32)[qwen_a], codes[ids[1]])
    assert llm.tokenizer.convert_tokens_to_ids("<end_of_turn>") in llm.stop_ids


def test_folded_embedding_scale_keeps_logits(gemma):
    llm, ref = gemma
    ids = llm.tokenizer("▁Paris is the", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(llm.model(ids).logits, ref(ids).logits)
        assert torch.equal(llm.embed(ids), ref.get_input_embeddings()(ids))
    assert llm.model.get_input_embeddings().weight is not llm.model.get_output_embeddings().weight


def test_extension_keeps_the_parent_byte_for_byte(parent, child):
    ckpt, _ = parent
    old_sd, new_sd = checkpoint.tensors(ckpt)[0], checkpoint.tensors(child)[0]
    parts = ("log_tau", "prompt", "text_prompt", "down.weight", "up.weight")  # the parent receivers' trained parts
    assert set(new_sd) - set(old_sd) == {f"adapter.tiny-gemma.{p}" for p in parts}
    for k, v in old_sd.items():
        assert new_sd[k].dtype == v.dtype and new_sd[k].numpy().tobytes() == v.numpy().tobytes()
    old, new = checkpoint.read_config(ckpt), checkpoint.read_config(child)
    for k, v in old.items():
        assert new[k] == v or k == "models"
    assert all(new["models"][n] == e for n, e in old["models"].items())
    assert new["parent"] == checkpoint.fingerprint(ckpt) != checkpoint.fingerprint(child)
    assert new["adapter_fingerprints"] == checkpoint.part_fingerprints(child)
    assert checkpoint.shared_parts(child, ckpt) == ["encoder", "tiny-llama", "tiny-qwen"]
    ext = new["extensions"][-1]
    assert (
        ext["model"] == "tiny-gemma"
        and ext["summary"]["tried"][0]["tau"] == old["models"]["tiny-llama"]["adapter"]["tau"]
    )
    # calibrated on every sender path, like the receivers the recipe built
    by_path = new["models"]["tiny-gemma"]["calibration"]
    sender_paths = {"evidence", "relay", "relay-tuned", "latent", "latent-closed"}
    assert set(by_path) == set(old["models"]["tiny-llama"]["calibration"]) == sender_paths
    assert by_path["latent"]["n"] == by_path["relay"]["n"] == 4
    # the same trained parts as the parent's receivers, trained by the same loop with the sender frozen
    for key in ("prompt_len", "rank", "lexicon"):
        assert new["models"]["tiny-gemma"]["adapter"][key] == old["models"]["tiny-llama"]["adapter"][key]
    assert ext["summary"]["training"]["steps"] == 2
    # the new adapter unbinds as many steps per row as the sender binds (the parent's recipe: 2)
    assert new["models"]["tiny-gemma"]["adapter"]["tokens_per_row"] == old["encoder"]["tokens_per_row"] == 2


def test_old_receivers_answer_the_same(parent, child, dev3):
    ckpt, llms = parent
    keys: list[str] = []
    for name, llm in llms.items():
        preds = []
        for path in (ckpt, child):
            wire = load_checkpoint(path, models=[name], llms=llms, reading_cache=False)
            res = evaluate(
                llm,
                dev3,
                "latent",
                slot_fn=wire.slot_fn(name),
                use_cache=False,
                progress=False,
                return_rows=True,
                max_new_tokens=6,
            )
            preds.append([(r["raw"], r["score"]) for r in res["rows"]])
            keys.append(wire.path_fingerprint("latent", name))
        assert preds[0] == preds[1]
        # so their measured latent rows stay valid: the cache key is the encoder's and their adapter's, not the
        # whole checkpoint's (which the extension changed)
        assert keys[-2] == keys[-1] and wire.fingerprint != checkpoint.fingerprint(ckpt)
    assert keys[0] != keys[2]  # another receiver's adapter, another key


def test_new_receiver_serves(parent, child, gemma, dev3):
    _, llms = parent
    llm = gemma[0]
    wire = load_checkpoint(child, models=["tiny-gemma"], llms={**llms, "tiny-gemma": llm}, reading_cache=False)
    assert wire.encoder.llm is llms["tiny-qwen"]  # the sharer is the parent's, unchanged
    fp = checkpoint.fingerprint(child)
    sender = Sender(wire.encoder, fp, 4, "s-test")
    receiver = Receiver(llm, load_adapter(child, "tiny-gemma", llm), "tiny-gemma", fp, "r-gemma")
    ex = dev3[0]
    ((frame, _),) = sender.build_many([Ask("r-1", "c", ex.question, ex.context(), mode="latent", quant="int4")])
    ((_, reply),) = receiver.replies([frame])
    assert type(reply).__name__ == "Reply" and reply.model == "tiny-gemma", reply
    assert decode_frame(frame).fingerprint == fp


def test_extension_refusals(parent, child, gemma):
    ckpt, llms = parent
    with pytest.raises(ValueError, match="own folder"):
        extend(ExtendRecipe(model="tiny-gemma"), ckpt, ckpt, llms={"tiny-gemma": gemma[0]})
    with pytest.raises(ValueError, match="already has"):
        extend(ExtendRecipe(model="tiny-gemma"), child, child.parent / "again", llms={"tiny-gemma": gemma[0]})


def test_adapter_that_unbinds_another_row_format_is_refused(child, gemma, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(child, bad)
    cfg = json.loads((bad / checkpoint.CONFIG).read_text())
    cfg["models"]["tiny-gemma"]["adapter"]["tokens_per_row"] = 1
    (bad / checkpoint.CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(checkpoint.CheckpointError, match="unbinds 1 steps per row, the sender binds 2"):
        load_adapter(bad, "tiny-gemma", gemma[0])


def test_gemma_is_embedded_with_a_chat_template(gemma, tmp_path):
    em = EMBEDDED["gemma"]
    assert len(em.parts) == 4 and len(em.sha256) == 64 and em.chat_template == GEMMA_CHAT_TEMPLATE
    assert all(f"part{i}==1.0.0" in em.requirements for i in range(1, 5))
    tok = gemma[0].tokenizer
    tpl = gemma[0].template  # renders the user turn verbatim around the slot
    assert tok.convert_ids_to_tokens(list(tpl.prefix_ids))[:2] == ["<bos>", "<start_of_turn>"]
    assert tok.convert_tokens_to_ids("<end_of_turn>") in tpl.suffix_ids
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == "<bos><start_of_turn>user\nS\n\nU<end_of_turn>\n<start_of_turn>model\n"
    (tmp_path / "tokenizer_config.json").write_text('{"bos_token": "<bos>"}')
    for _ in range(2):  # idempotent
        _ensure_chat_template(tmp_path, GEMMA_CHAT_TEMPLATE)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text()) == {
        "bos_token": "<bos>",
        "chat_template": GEMMA_CHAT_TEMPLATE,
    }


def test_sender_path_keys_follow_what_the_answers_depend_on(parent):
    """Cached rows are reused only where the answers cannot differ: relay and evidence follow the selection
    (the sharer reads what it selects), the latent follows the encoder and the receiver's own adapter."""
    ckpt, llms = parent
    wire = load_checkpoint(ckpt, llms=llms, reading_cache=False)
    before = {m: wire.path_fingerprint(m, "tiny-llama") for m in ("evidence", "relay", "latent")}
    wire.encoder.selector.cfg.paragraphs += 1
    after = {m: wire.path_fingerprint(m, "tiny-llama") for m in ("evidence", "relay")}
    assert before["evidence"] != after["evidence"] and before["relay"] != after["relay"]
    assert before["latent"] != wire.path_fingerprint("latent", "tiny-qwen")
