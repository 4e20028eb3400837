"""Under CURVE a receiver's id is bound to the key it was first heard with: another accepted key cannot speak for
it (no `stopping`, no calibration, no replies under its id); each try is refused and counted as `impostor`."""

from __future__ import annotations

import pytest
import zmq
import zmq.auth
from arbkit import FP, LiveArbiter, wait_for

from latentwire.processes import net
from latentwire.protocol import Heartbeat, encode_frame


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")
def test_another_key_cannot_speak_for_a_receiver(tmp_path):
    keys = tmp_path / "keys"
    net.keygen(keys)
    zmq.auth.create_certificates(str(keys), "receiver-b")  # a second receiver key the arbiter accepts
    live = LiveArbiter(curve_dir=str(keys)).start()  # r-qwen heard and proven with the `receiver` key
    forger = live.socket(zmq.PUSH, live.replies, "receiver-b")
    try:
        assert wait_for(lambda: live.status().info.get("n_receivers") == 1)
        for status in ("ready", "stopping"):
            hb = Heartbeat(
                "", "r-qwen", "receiver", status, {"model": "qwen", "fingerprint": "0" * 64}, {"text": (0, 9)}
            )
            forger.send(encode_frame(hb))
        assert wait_for(lambda: live.status().info.get("impostor") == 2)
        info = live.status().info
        assert info["n_receivers"] == 1 and "mismatch" not in info, info  # still serving, on its own checkpoint
        # the forger's key is accepted, so a receiver of its own is welcome
        forger.send(encode_frame(Heartbeat("", "r-b", "receiver", "ready", {"model": "qwen", "fingerprint": FP})))
        assert wait_for(lambda: live.status().info.get("unproven") == "qwen")
    finally:
        forger.close(0)
        live.close()
