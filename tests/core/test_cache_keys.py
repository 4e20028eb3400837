"""The cache keys of every path, engine and receiver, pinned: the committed rows (`latentwire/rows/<key>.jsonl`) are
found by these strings, so a refactor that changes one byte of a key silently recomputes (or misses) published rows.

The checkpoint's weights enter the keys only through their fingerprints; those are pinned to fixed strings here so
the keys do not depend on the toy training's floats, while everything else (the selector's and sharer's
configuration, the tiny models' fingerprints, the evaluation's arguments) comes from the real checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from latentwire.evaluate import evaluate
from latentwire.protocol import ENGINE_PATHS, PATH_NAMES, TRAINED_PATHS, path_spec
from latentwire.system.pipeline import load_checkpoint

ENGINES = ("float32", "bf16-w8")
CONTEXTS = ("distractor", "gold")


def _keys(wire, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    keys: dict[str, str] = {}
    for engine in ENGINES:
        for llm in {id(x): x for x in [*wire.llms.values(), wire.encoder.llm]}.values():
            monkeypatch.setattr(llm.model, "engine", engine, raising=False)
        for path in PATH_NAMES:
            spec = path_spec(path)
            if spec.sender:
                keys[f"{engine}/{path}/-"] = wire.path_fingerprint(path)
            for name, llm in wire.llms.items():
                if spec.sender:
                    keys[f"{engine}/{path}/{name}"] = wire.path_fingerprint(path, name)
                for context in CONTEXTS:
                    for scheme in (None, "int8") if spec.latent else (None,):
                        args = wire.eval_args(name, path, context, scheme)
                        res = evaluate(llm, [], path, context=context, split="dev", progress=False, **args)
                        keys[f"{engine}/{path}/{name}/{context}/{scheme}"] = Path(res["cache"]).stem
    return keys


def test_cache_keys_unchanged(tiny_trained, tmp_path, monkeypatch) -> None:
    ckpt, llms = tiny_trained
    monkeypatch.setenv("LATENTWIRE_CACHE", str(tmp_path))
    wire = load_checkpoint(ckpt, llms=llms, reading_cache=False)
    wire.fingerprint = "checkpoint-fingerprint"
    wire.__dict__["parts"] = {"encoder": "encoder-fingerprint", **{n: f"{n}-fingerprint" for n in wire.model_names}}
    assert _keys(wire, monkeypatch) == EXPECTED


EXPECTED: dict[str, str] = {
    "float32/text/tiny-llama/distractor/None": "117d027d244fc185e33e771c",
    "float32/text/tiny-llama/gold/None": "6a5eb33b9575bb8c782919ff",
    "float32/text/tiny-qwen/distractor/None": "aae33e25f75a512080fc2f06",
    "float32/text/tiny-qwen/gold/None": "45971c6436b3f6ea2866b281",
    "float32/token-budget/tiny-llama/distractor/None": "61936570c882ebdd85dc5675",
    "float32/token-budget/tiny-llama/gold/None": "6cbcb47f0f1f3549352d9b0c",
    "float32/token-budget/tiny-qwen/distractor/None": "ebc428d9aa36922582303b97",
    "float32/token-budget/tiny-qwen/gold/None": "ccccb3f695dc8ee655b3aaa6",
    "float32/evidence/-": "evidence:9c64d17e6c0e9fdd3d70228f",
    "float32/evidence/tiny-llama": "evidence:9c64d17e6c0e9fdd3d70228f",
    "float32/evidence/tiny-llama/distractor/None": "823a1298ac57578ee1d72ac1",
    "float32/evidence/tiny-llama/gold/None": "e038e025a9617a13b4969a50",
    "float32/evidence/tiny-qwen": "evidence:9c64d17e6c0e9fdd3d70228f",
    "float32/evidence/tiny-qwen/distractor/None": "4c1321ec84a7a10de88e23a4",
    "float32/evidence/tiny-qwen/gold/None": "dbe760b8538aac5f3f3cece5",
    "float32/relay/-": "relay:9bb56289da1d81f55032:9c64d17e6c0e9fdd3d70228f",
    "float32/relay/tiny-llama": "relay:9bb56289da1d81f55032:9c64d17e6c0e9fdd3d70228f",
    "float32/relay/tiny-llama/distractor/None": "21c9d86fac4463bdad74027a",
    "float32/relay/tiny-llama/gold/None": "ec7b9c97b394245290ca18fd",
    "float32/relay/tiny-qwen": "relay:9bb56289da1d81f55032:9c64d17e6c0e9fdd3d70228f",
    "float32/relay/tiny-qwen/distractor/None": "7968c389c1f2c8278e0e713b",
    "float32/relay/tiny-qwen/gold/None": "4c69d182877eea39b46b4305",
    "float32/relay-tuned/-": "relay-tuned:checkpoint-fingerprint",
    "float32/relay-tuned/tiny-llama": "relay-tuned:0bab6145d0d9142531c68961",
    "float32/relay-tuned/tiny-llama/distractor/None": "b0f9836e3772e8dea8ab3ba7",
    "float32/relay-tuned/tiny-llama/gold/None": "0c277c91789eca504b93442f",
    "float32/relay-tuned/tiny-qwen": "relay-tuned:40faf9df3d21f77d427cab94",
    "float32/relay-tuned/tiny-qwen/distractor/None": "a42b00202656f8a222b6468b",
    "float32/relay-tuned/tiny-qwen/gold/None": "ba8e43c45f3451a64752c55d",
    "float32/latent/-": "latent:checkpoint-fingerprint",
    "float32/latent/tiny-llama": "latent:6fce8c9a875ead3b8e145695",
    "float32/latent/tiny-llama/distractor/None": "efb812b13cb21f261b4cdc2a",
    "float32/latent/tiny-llama/distractor/int8": "09cfdc3406d4ce1530321495",
    "float32/latent/tiny-llama/gold/None": "70b570347c438062cc247468",
    "float32/latent/tiny-llama/gold/int8": "73999777fa8622ad82dd0aa0",
    "float32/latent/tiny-qwen": "latent:99eb77ec8db2a92fd5ac2e26",
    "float32/latent/tiny-qwen/distractor/None": "940ac47f456787e6f6defb00",
    "float32/latent/tiny-qwen/distractor/int8": "9f22596b040f860afe24a1f3",
    "float32/latent/tiny-qwen/gold/None": "372d2b3911255c0aeee4acdd",
    "float32/latent/tiny-qwen/gold/int8": "6d128677a8a0cc43d1cd042c",
    "float32/latent-closed/-": "latent-closed:checkpoint-fingerprint",
    "float32/latent-closed/tiny-llama": "latent-closed:6fce8c9a875ead3b8e145695",
    "float32/latent-closed/tiny-llama/distractor/None": "c705bc1ccc1f1de5d927df42",
    "float32/latent-closed/tiny-llama/distractor/int8": "16d69bd785ebd21f5f5968ab",
    "float32/latent-closed/tiny-llama/gold/None": "25406a1803d0d06f2e4b18d0",
    "float32/latent-closed/tiny-llama/gold/int8": "942b500f913ea29bfadfdf3f",
    "float32/latent-closed/tiny-qwen": "latent-closed:99eb77ec8db2a92fd5ac2e26",
    "float32/latent-closed/tiny-qwen/distractor/None": "b848b64da01c9f6bb0367ac1",
    "float32/latent-closed/tiny-qwen/distractor/int8": "8734032754664a6b3bcafaa2",
    "float32/latent-closed/tiny-qwen/gold/None": "68d82833da020770f3ec9d6f",
    "float32/latent-closed/tiny-qwen/gold/int8": "1fd631a790d20626b164d706",
    "bf16-w8/text/tiny-llama/distractor/None": "2c41916c9ad38c00a0c3c588",
    "bf16-w8/text/tiny-llama/gold/None": "ff55e42cb1ea3c01a93ff910",
    "bf16-w8/text/tiny-qwen/distractor/None": "fa0eceb694e2dcb7cb4aba49",
    "bf16-w8/text/tiny-qwen/gold/None": "c72a019d4ac75a23e0ff1a16",
    "bf16-w8/token-budget/tiny-llama/distractor/None": "0225f0bb8c2833d8a1af44c8",
    "bf16-w8/token-budget/tiny-llama/gold/None": "6e3112286041cdb331c36fc5",
    "bf16-w8/token-budget/tiny-qwen/distractor/None": "2f986b76b4fb644c3c1f84aa",
    "bf16-w8/token-budget/tiny-qwen/gold/None": "8f6b6f74ec447033fd675b98",
    "bf16-w8/evidence/-": "evidence:9c64d17e6c0e9fdd3d70228f",
    "bf16-w8/evidence/tiny-llama": "evidence:9c64d17e6c0e9fdd3d70228f",
    "bf16-w8/evidence/tiny-llama/distractor/None": "28a4e93df274a3dc88b3d70a",
    "bf16-w8/evidence/tiny-llama/gold/None": "c1431708516ce8b8415fca8c",
    "bf16-w8/evidence/tiny-qwen": "evidence:9c64d17e6c0e9fdd3d70228f",
    "bf16-w8/evidence/tiny-qwen/distractor/None": "90cb29dd7e917b485f1da0c6",
    "bf16-w8/evidence/tiny-qwen/gold/None": "6e67a8be7f2a2b0f6ff7cac6",
    "bf16-w8/relay/-": "relay:c92124f40b8cb629355c:9c64d17e6c0e9fdd3d70228f",
    "bf16-w8/relay/tiny-llama": "relay:c92124f40b8cb629355c:9c64d17e6c0e9fdd3d70228f",
    "bf16-w8/relay/tiny-llama/distractor/None": "d681b4ed69fa78d4c6de7b6c",
    "bf16-w8/relay/tiny-llama/gold/None": "257c805b0db74c1a57c89bfa",
    "bf16-w8/relay/tiny-qwen": "relay:c92124f40b8cb629355c:9c64d17e6c0e9fdd3d70228f",
    "bf16-w8/relay/tiny-qwen/distractor/None": "b54f4522a9b6176aa5edaef8",
    "bf16-w8/relay/tiny-qwen/gold/None": "f1cf29f7c41dd49019168529",
    "bf16-w8/relay-tuned/-": "relay-tuned:checkpoint-fingerprint",
    "bf16-w8/relay-tuned/tiny-llama": "relay-tuned:69620d36d5aeb68c78855aa3",
    "bf16-w8/relay-tuned/tiny-llama/distractor/None": "023c96be0a6580b62798bdf9",
    "bf16-w8/relay-tuned/tiny-llama/gold/None": "1c3dfac65997b7fcac0c22de",
    "bf16-w8/relay-tuned/tiny-qwen": "relay-tuned:1ff4ee787d3345d406e350f9",
    "bf16-w8/relay-tuned/tiny-qwen/distractor/None": "2fa5b6574328f6be94ea10c1",
    "bf16-w8/relay-tuned/tiny-qwen/gold/None": "9a917e77f180643ade654908",
    "bf16-w8/latent/-": "latent:checkpoint-fingerprint",
    "bf16-w8/latent/tiny-llama": "latent:7b637e8ca4dee9b50c7f36d0",
    "bf16-w8/latent/tiny-llama/distractor/None": "3b7b25e162f14c4a147782b7",
    "bf16-w8/latent/tiny-llama/distractor/int8": "e6f4a8485bb778b7d8080804",
    "bf16-w8/latent/tiny-llama/gold/None": "21bbec415a20ebc648f11862",
    "bf16-w8/latent/tiny-llama/gold/int8": "578e89b78b2d7a24af83dc10",
    "bf16-w8/latent/tiny-qwen": "latent:5727b436bba06876b977dc26",
    "bf16-w8/latent/tiny-qwen/distractor/None": "9d55bd263e0dc8b6c06a6a36",
    "bf16-w8/latent/tiny-qwen/distractor/int8": "ec125b3eca967e3dff8fe6c6",
    "bf16-w8/latent/tiny-qwen/gold/None": "a2cdba394216c719b845585b",
    "bf16-w8/latent/tiny-qwen/gold/int8": "8da5c2702b970564fbce5f32",
    "bf16-w8/latent-closed/-": "latent-closed:checkpoint-fingerprint",
    "bf16-w8/latent-closed/tiny-llama": "latent-closed:7b637e8ca4dee9b50c7f36d0",
    "bf16-w8/latent-closed/tiny-llama/distractor/None": "a65125108cfa7dcb356937d7",
    "bf16-w8/latent-closed/tiny-llama/distractor/int8": "947756057b297aae0d7b219e",
    "bf16-w8/latent-closed/tiny-llama/gold/None": "71d77af01d1372ffa13461e3",
    "bf16-w8/latent-closed/tiny-llama/gold/int8": "7067c2f0494ddebb3c350814",
    "bf16-w8/latent-closed/tiny-qwen": "latent-closed:5727b436bba06876b977dc26",
    "bf16-w8/latent-closed/tiny-qwen/distractor/None": "84019ecaff7ac0b354fecd66",
    "bf16-w8/latent-closed/tiny-qwen/distractor/int8": "d714fcfce547dbb9ede0430c",
    "bf16-w8/latent-closed/tiny-qwen/gold/None": "9186e1df73ad8a64633e6c98",
    "bf16-w8/latent-closed/tiny-qwen/gold/int8": "9986a858bddbe4d56c5c2e75",
}


def test_path_facts_that_batches_and_benches_read() -> None:
    """The facts that replaced comparisons of path names pick the same paths the names did."""
    assert [p for p in PATH_NAMES if path_spec(p).whole_context] == ["text"]
    assert [p for p in PATH_NAMES if path_spec(p).passages] == ["text", "evidence"]
    assert ENGINE_PATHS == ("latent", "relay", "evidence")
    assert TRAINED_PATHS == ("latent", "relay-tuned")
