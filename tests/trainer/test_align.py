"""Token alignment (trainer/align.py) and the pooler's window embedding; the warm-up itself: test_trainer.py."""

import torch

from latentwire.sender.encoder import EncoderConfig
from latentwire.tiny import tiny_llm
from latentwire.trainer.align import align_loss, slot_accuracy, slot_targets


def test_targets_loss_and_accuracy():
    llm = tiny_llm("llama")
    eos = llm.tokenizer.eos_token_id
    answers = [[5, 6, 7, eos], [eos], [1, 2, 3, 4, 5, 6, eos]]
    tgt = slot_targets(answers, m=4, skip=eos)
    assert tgt.tolist() == [[5, 6, 7, -100], [-100] * 4, [1, 2, 3, 4]]
    exact = llm.embed(tgt.clamp(min=0)).detach()  # soft tokens that are the answer's own embeddings
    noise = torch.randn_like(exact)
    assert align_loss(llm, exact, tgt) < 0.1 < align_loss(llm, noise, tgt)
    assert align_loss(llm, noise, torch.full((3, 4), -100)) == 0.0  # no answer tokens: no signal, no NaN
    assert slot_accuracy(llm, exact, tgt) == 1.0
    assert slot_accuracy(llm, -exact, tgt) == 0.0


def test_window_embedding_lets_the_pooler_tell_windows_apart():
    from latentwire.sender.encoder import Resampler

    torch.manual_seed(0)
    feats = torch.randn(1, 8, 16)  # two windows of 4
    swapped = torch.cat([feats[:, 4:], feats[:, :4]], 1)
    mask = torch.ones(1, 8, dtype=torch.bool)
    for on in (False, True):
        cfg = EncoderConfig(backbone="minilm", window=4, max_windows=2, window_embedding=on, d_model=16, d_z=8, m=2)
        pool = Resampler(cfg, in_dim=16)
        if on:
            torch.nn.init.normal_(pool.window_embed.weight, std=1.0)
        same = torch.allclose(pool(feats, mask), pool(swapped, mask), atol=1e-5)
        assert same != on  # without it, attention is order-blind across windows
