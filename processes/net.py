"""ZeroMQ plumbing shared by the processes: addresses, sockets, CURVE keys, signals, the Procfile.

Why one module: every process must agree on the same defaults (loopback only), the same socket options
(linger, high-water marks) and the same key layout, or a cross-host deployment fails in confusing ways.
No torch here, so the arbiter and clients start fast.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from latentwire.protocol import DEFAULT_LIMITS

log = logging.getLogger("latentwire.net")

# name -> (environment variable, loopback default). Binds and connects use the same value, so to go
# across hosts bind 0.0.0.0 (or one interface) on the serving side and give its host name to the others.
ADDRESSES: dict[str, tuple[str, str]] = {
    "arbiter": ("LATENTWIRE_ARBITER", "tcp://127.0.0.1:5555"),  # clients -> arbiter frontend (ROUTER)
    "backend": ("LATENTWIRE_BACKEND", "tcp://127.0.0.1:5556"),  # senders -> arbiter backend (ROUTER)
    "replies": ("LATENTWIRE_REPLIES", "tcp://127.0.0.1:5557"),  # receivers -> arbiter replies (PULL)
    "receivers": ("LATENTWIRE_RECEIVERS", "tcp://127.0.0.1:5561,tcp://127.0.0.1:5562"),  # sender -> receivers
    "receiver": ("LATENTWIRE_RECEIVER", "tcp://127.0.0.1:5561"),  # where one receiver binds (PULL)
}
CURVE_ENV = "LATENTWIRE_CURVE"  # folder made by `latentwire keygen`; unset = no encryption
ROLES = ("arbiter", "sender", "receiver", "client")
LINGER_MS = 1000  # at close, give queued frames one second to leave, never hang
HWM = 1000  # frames queued per peer before a send reports EAGAIN (then the peer counts as unavailable)
HEARTBEAT_S = 1.0  # how often a process says it is alive
DEAD_AFTER_S = 4.0  # the arbiter forgets a process silent for this long
MAX_FANOUT = 256  # receivers one sender may fan out to (bounds the byte counts it may report)
MAX_MSG_BYTES = DEFAULT_LIMITS.max_frame_bytes  # ZMQ_MAXMSGSIZE: a bigger message drops its peer, never buffered


def address(name: str, value: str | None = None) -> str:
    """The address `name`: the flag's value, else its environment variable, else the loopback default."""
    env, default = ADDRESSES[name]
    return value or os.environ.get(env) or default


def address_list(name: str, value: str | None = None) -> list[str]:
    """A comma-separated address list (e.g. the receivers a sender fans out to)."""
    return [a.strip() for a in address(name, value).split(",") if a.strip()]


def process_id(role: str, name: str = "") -> str:
    """A unique id for the `sender` field of frames: role, name, host, pid and a random suffix."""
    parts = [role, name, socket.gethostname(), str(os.getpid()), uuid.uuid4().hex[:6]]
    return "-".join(p for p in parts if p)


def free_port() -> int:
    """A TCP port that is free right now on loopback (tests and `up` use it to avoid clashes)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- CURVE ----


def keygen(folder: str | Path) -> list[Path]:
    """Write one CURVE key pair per role (`<role>.key` public, `<role>.key_secret` secret, mode 600).

    Deploy: each host gets its own role's secret plus the public keys of the roles it talks to; a serving
    socket accepts only clients whose public key is in a `<allowed-role>*.key` file of its folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for role in ROLES:
        public, secret = zmq.auth.create_certificates(str(folder), role)
        os.chmod(secret, 0o600)
        written += [Path(public), Path(secret)]
    return written


@dataclass
class Curve:
    """CURVE keys of one process, read from a keygen folder; None of this runs when CURVE is off."""

    folder: Path
    role: str
    _auth: ThreadAuthenticator | None = field(default=None, repr=False)
    _allowed: dict[str, set[bytes]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, role: str, folder: str | Path | None = None) -> Curve | None:
        folder = folder or os.environ.get(CURVE_ENV)
        if not folder:
            return None
        if not zmq.has("curve"):
            raise RuntimeError("CURVE requested but this libzmq was built without it")
        path = Path(folder)
        if not (path / f"{role}.key_secret").is_file():
            raise FileNotFoundError(f"CURVE: {path / (role + '.key_secret')} is missing (run `latentwire keygen`)")
        return cls(path, role)

    def _keys(self, role: str) -> tuple[bytes, bytes | None]:
        secret_file = self.folder / f"{role}.key_secret"
        return zmq.auth.load_certificate(str(secret_file if secret_file.is_file() else self.folder / f"{role}.key"))

    def client(self, sock: zmq.Socket, server_role: str) -> None:
        """Encrypt `sock` and authenticate the server it connects to by its public key."""
        public, secret = self._keys(self.role)
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_serverkey = self._keys(server_role)[0]

    def server(self, sock: zmq.Socket, allowed_role: str) -> None:
        """Encrypt `sock` and accept only clients holding a key of `allowed_role` (files `<role>*.key`)."""
        public, secret = self._keys(self.role)
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_server = True
        sock.zap_domain = allowed_role.encode()
        if self._auth is None:
            self._auth = ThreadAuthenticator(sock.context)
            self._auth.start()
        keys = {zmq.auth.load_certificate(str(p))[0] for p in self.folder.glob(f"{allowed_role}*.key")}
        self._allowed[allowed_role] = keys
        self._auth.configure_curve_callback(domain=allowed_role, credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:  # called by the ZAP authenticator thread
        ok = key in self._allowed.get(domain, set())
        if not ok:  # a refused handshake is otherwise silent on this side
            log.warning("CURVE: refused a %s connection with unknown key %s", domain, key.decode("ascii", "replace"))
        return ok

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def make_socket(ctx: zmq.Context, kind: int, *, identity: str | None = None) -> zmq.Socket:
    """A socket with the project's options: bounded linger and queues, fast reconnects."""
    sock = ctx.socket(kind)
    sock.linger = LINGER_MS
    sock.maxmsgsize = MAX_MSG_BYTES
    sock.sndhwm = sock.rcvhwm = HWM
    sock.reconnect_ivl = 100
    sock.reconnect_ivl_max = 2000
    if identity is not None:
        sock.identity = identity.encode()
    return sock


# ---- signals ----


class StopFlag:
    """Set by SIGINT/SIGTERM; loops poll with a short timeout and finish their work when it is set."""

    def __init__(self, install: bool = True) -> None:
        self._event = threading.Event()
        self.signal: int | None = None
        if install and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.signal = signum
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)
