"""`latentwire calibrate`: any path's score calibration is fitted on `val` and written into the checkpoint, the
parts (and so the rows measured on them) stay, and receivers announce the new maps to the arbiter."""

from __future__ import annotations

import shutil

import pytest

from latentwire import checkpoint
from latentwire.arbiter.roster import Roster
from latentwire.calibration import Calibration, announced
from latentwire.protocol import WIRE_PATHS, Heartbeat, decode_frame, encode_frame
from latentwire.trainer.calibrate import calibrate


@pytest.fixture(scope="module")
def built(tiny_trained):
    return tiny_trained


def test_calibrate_adds_paths_and_keeps_the_parts(built, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTWIRE_CACHE", str(tmp_path / "cache"))
    src, llms = built
    ckpt = tmp_path / "ckpt"
    shutil.copytree(src, ckpt)
    before, parts, fp = checkpoint.load_config(ckpt), checkpoint.part_fingerprints(ckpt), checkpoint.fingerprint(ckpt)
    fitted = calibrate(ckpt, ("text", "token-budget"), n=4, limits={"text": 2}, llms=llms, progress=False, log=print)
    after = checkpoint.load_config(ckpt)
    assert set(fitted) == {"tiny-llama", "tiny-qwen"}
    for name in fitted:
        cals = after.models[name].calibration
        assert cals["text"]["n"] == 2 and cals["token-budget"]["n"] == 4
        for kept in ("latent", "relay"):  # paths not named keep their maps
            assert cals[kept] == before.models[name].calibration[kept]
    assert checkpoint.part_fingerprints(ckpt) == parts  # what answers depend on is unchanged
    assert checkpoint.fingerprint(ckpt) != fp  # the checkpoint itself is not
    # a second run reads its rows from the cache and fits the same maps
    assert calibrate(ckpt, ("text", "token-budget"), n=4, limits={"text": 2}, llms=llms, progress=False) == fitted


def test_receivers_announce_every_wire_path_and_the_arbiter_reads_it(built):
    ckpt, _ = built
    fitted = checkpoint.load_config(ckpt).models["tiny-llama"].calibration
    beat = Heartbeat("", "r1", "receiver", "ready", {"model": "tiny-llama"}, announced(fitted))
    hb = decode_frame(encode_frame(beat))
    assert set(hb.calibration) == set(fitted) & set(WIRE_PATHS) == {"evidence", "relay", "latent"}
    roster = Roster()
    roster.heartbeat(hb, 0.0, role="receiver")
    roster.prove("r1")
    for path in WIRE_PATHS:  # the paths an Ask may name; one without a map is compared on raw scores
        want = Calibration(fitted[path]["a"], fitted[path]["b"]) if path in fitted else Calibration()
        assert roster.calibration("tiny-llama", path) == want


def test_unknown_paths_are_refused(built, tmp_path):
    src, llms = built
    ckpt = tmp_path / "ckpt"
    shutil.copytree(src, ckpt)
    with pytest.raises(ValueError, match="cannot be measured on telepathy"):
        calibrate(ckpt, ("telepathy",), n=2, llms=llms, progress=False)


def test_the_joint_pick_never_loses_to_the_best_receiver_on_the_fitted_rows():
    """b is sure of its wrong answers, a is right but unsure: the prior makes the pick a's, where plain maps
    would follow b's scores."""
    from latentwire.calibration import joint
    from latentwire.trainer.calibrate import with_prior

    rows = {
        "a": [{"pred": "yes", "score": -2.0, "f1": 1.0, "em": 1.0} for _ in range(4)],
        "b": [{"pred": "no", "score": -0.1, "f1": 0.0, "em": 0.0} for _ in range(4)],
    }
    plain = {"a": Calibration(), "b": Calibration()}
    assert joint(rows, plain)["joint"]["f1"] == 0.0
    cals = with_prior(rows, plain)
    assert joint(rows, cals)["joint"]["f1"] == 1.0 and cals["b"] == plain["b"] and cals["a"].b > 0
    even = {"a": rows["a"], "b": [dict(r, f1=1.0, em=1.0) for r in rows["b"]]}
    assert with_prior(even, plain) == plain  # no prior where the pick already matches the best receiver
