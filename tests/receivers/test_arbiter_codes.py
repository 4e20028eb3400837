"""The arbiter names why it refuses an undecodable client frame with the codes SPEC.md lists for it, under the
frame's own request id: another major version (`bad_version`), an unknown quant scheme (`bad_quant`), anything
else (`bad_frame`)."""

from __future__ import annotations

import msgpack
import pytest
import zmq
from arbkit import LiveArbiter, recv

from latentwire.protocol import Ask, ErrorReply, encode_frame


@pytest.fixture
def live():
    arb = LiveArbiter().start(prove=False)
    yield arb
    arb.close()


def _ask(**changes: object) -> bytes:
    wire = msgpack.unpackb(encode_frame(Ask("c-1", "client", "Who?", "Ada wrote it.")), raw=False)
    return msgpack.packb({**wire, **changes}, use_bin_type=True)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (_ask(v=3), "bad_version"),
        (_ask(q="int3"), "bad_quant"),
        (_ask(m="telepathy"), "bad_frame"),
        (_ask(x=""), "bad_frame"),
    ],
    ids=["version", "quant", "mode", "empty-question"],
)
def test_an_undecodable_ask_gets_the_specific_code(live, frame: bytes, code: str) -> None:
    client = live.socket(zmq.DEALER, live.front)
    try:
        client.send(frame)
        msg = recv(client)
        assert isinstance(msg, ErrorReply) and (msg.rid, msg.code) == ("c-1", code), msg
    finally:
        client.close(0)
