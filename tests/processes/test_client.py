"""The client never blocks past the caller's timeout: a refused CURVE key or a silent arbiter gives a clear
`refused` / `timeout` answer, and one bad item of a batch fails alone."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import zmq

from latentwire.arbiter import process as arbiter
from latentwire.processes import net
from latentwire.processes.client import Client, Refused, ask_fields


def _addr() -> str:
    return f"tcp://127.0.0.1:{net.free_port()}"


@pytest.fixture
def curve_arbiter(tmp_path: Path):
    keys = tmp_path / "keys"
    net.keygen(keys)
    front = _addr()
    stop = net.StopFlag(install=False)
    kw = dict(frontend=front, backend=_addr(), replies=_addr(), curve_dir=str(keys), drain=0.1, stop=stop)
    t = threading.Thread(target=arbiter.serve, kwargs=kw)
    t.start()
    yield front, keys
    stop.set()
    t.join(10)


def _in_thread(fn):
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(60)  # generous: the calls below are bounded by ~1 s timeouts; a hang fails here instead
    assert not t.is_alive(), "the client call did not return"
    return out[0]


def test_refused_curve_key_is_a_clear_error(curve_arbiter, tmp_path: Path, caplog) -> None:
    front, keys = curve_arbiter
    stranger = tmp_path / "stranger"
    net.keygen(stranger)  # a client key pair the arbiter does not know
    (stranger / "arbiter.key_secret").unlink()
    shutil.copy(keys / "arbiter.key", stranger / "arbiter.key")
    with Client(front, curve_dir=str(stranger), timeout=30) as c:

        def wait() -> Exception | None:
            try:
                c.wait_ready(30)
            except TimeoutError as e:
                return e
            return None

        err = _in_thread(wait)
        assert isinstance(err, Refused) and "refused this client's CURVE key" in str(err)
        a = _in_thread(lambda: c.ask("Who?", "Ada."))
        assert not a.ok and a.error.code == "refused"
    assert "CURVE: refused a client connection" in caplog.text
    with Client(front, curve_dir=str(keys), timeout=30) as c:  # the right key is accepted
        assert _in_thread(lambda: c.status(5.0)) is not None


def test_sends_are_bounded_when_the_arbiter_never_reads() -> None:
    with Client(_addr(), timeout=0.5) as c:  # nothing listens there
        while True:  # fill the queue, as a long outage would
            try:
                c._sock.send(b"x", zmq.NOBLOCK)
            except zmq.Again:
                break
        a = _in_thread(lambda: c.ask("Who?", "Ada."))
        assert not a.ok and a.error.code == "timeout"
        assert _in_thread(lambda: c.status(0.3)) is None
        with pytest.raises(TimeoutError):
            c.wait_ready(0.5)


def test_bad_item_fails_alone() -> None:
    with Client(_addr(), timeout=0.3) as c:
        items = [(0, "Q?", "ctx"), (1, "Q?", "x" * 5_000_000), (2, "", "empty question"), (3, "Q?", "ctx")]
        answers = {a.tag: a for a in _in_thread(lambda: list(c.ask_many(items, window=2, quant="int4")))}
        assert sorted(answers) == [0, 1, 2, 3]
        assert answers[1].error.code == "bad_request" and "exceeds the limit" in answers[1].error.message
        assert answers[2].error.code == "bad_request" and answers[2].ask.quant == "int4"
        assert answers[0].error.code == answers[3].error.code == "timeout"  # nobody there to answer


def test_the_path_option_and_its_old_name_mode() -> None:
    empty = [(0, "", "ctx")]  # an empty question: refused before anything is sent
    with Client(_addr(), timeout=0.3) as c:
        (a,) = c.ask_many(empty, path="text")
        assert a.error.code == "bad_request" and a.ask.path == a.ask.mode == "text" and a.to_row()["path"] == "text"
        with pytest.warns(DeprecationWarning, match="mode= is now path=") as warned:
            (b,) = c.ask_many(empty, mode="relay")
            d = c.ask("", "ctx", mode="evidence")
        assert (b.ask.path, d.ask.path) == ("relay", "evidence")
        assert [w.filename for w in warned] == [__file__, __file__]  # pointed at the caller
        with pytest.raises(TypeError, match="give path= only"):
            c.ask_many(empty, path="text", mode="latent")
    assert ask_fields({"path": "relay", "quant": "int4"}) == {"mode": "relay", "quant": "int4"}
