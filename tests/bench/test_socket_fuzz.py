"""The arbiter at its three sockets under >= 10,000 hostile frames (the bench module runs 100,000 against the
arbiter and a receiver as processes): nothing crashes it, every client frame is answered, real requests still
work; and no socket buffers a message over the protocol's frame limit."""

from __future__ import annotations

import threading

import zmq

from latentwire.arbiter import process as arbiter
from latentwire.bench.socket_fuzz import ArbiterFuzz
from latentwire.processes import net
from latentwire.protocol import DEFAULT_LIMITS, Heartbeat


def _addr() -> str:
    return f"tcp://127.0.0.1:{net.free_port()}"


def test_arbiter_survives_hostile_frames_at_all_three_sockets() -> None:
    front, back, replies = _addr(), _addr(), _addr()
    stop = net.StopFlag(install=False)
    kw = dict(frontend=front, backend=back, replies=replies, timeout=2.0, drain=0.5, stop=stop)
    t = threading.Thread(target=arbiter.serve, kwargs=kw)
    t.start()
    fz = ArbiterFuzz(front, back, replies, seed=1, window=256)
    try:
        res = fz.run(10_000)
        assert res["front"] + res["back"] + res["pull"] >= 10_000
        assert res["hangs"] == 0 and res["final_ok"], res
        st = res["arbiter_stats"]
        assert st.get("internal_error", 0) == 0, st
        for reached in ("bad_client_frame", "bad_sender_frame", "bad_reply_frame", "forged", "bad_role", "served"):
            assert st.get(reached, 0) > 0, (reached, st)  # the frames get past the codec into the join
        assert st["peers"] <= 2 * arbiter.MAX_PEERS

        # a message over the frame limit is refused by the socket itself: never buffered, never decoded
        ctx = zmq.Context.instance()
        big = ctx.socket(zmq.PUSH)
        big.linger = 1000
        big.connect(replies)
        big.send(b"\x00" * (DEFAULT_LIMITS.max_frame_bytes + 1))
        big.close()
        status = fz.ask(Heartbeat("after-big", "client", "client", "ping"))
        assert isinstance(status, Heartbeat) and status.info.get("bad_reply_frame") == st["bad_reply_frame"]
        assert t.is_alive()
    finally:
        fz.close()
        stop.set()
        t.join(10)
    assert not t.is_alive()


def test_every_socket_caps_message_size_at_the_frame_limit() -> None:
    ctx = zmq.Context()
    try:
        for kind in (zmq.ROUTER, zmq.DEALER, zmq.PUSH, zmq.PULL):
            s = net.make_socket(ctx, kind)
            assert s.maxmsgsize == DEFAULT_LIMITS.max_frame_bytes
            s.close(0)
    finally:
        ctx.term()
