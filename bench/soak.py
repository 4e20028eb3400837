"""Soak: the whole system live on tiny models over loopback, normal traffic mixed with the hostile cases, for a while.

`python -m latentwire.bench.soak --minutes 10` (or `--seconds 20`) starts `latentwire up` on free 127.0.0.1 ports
(a tiny checkpoint is built first unless `--ckpt` names one), runs these roles side by side until the time is up, and
prints one line per role: lost / degraded / p50 and p95 latency / peak resident memory (psutil).

Traffic roles, each on its own connection, each bounded in rate and so in count:

* `normal`: a client keeping two asks in flight, rotating latent int8 / latent int4 / text / token-budget;
* `oversized`: every 2 s a text ask of 3 KB, of 100 KB (over the receivers' slot cap: `too_large`) or of 2 MB (over
  the frame limit: refused by the client);
* `flood`: every FLOOD_EVERY_S a burst of FLOOD_ASKS asks with a window far over its fair share (`busy`);
* `contexts`: every 2 s a latent ask whose context is over the sender's bounds (100 KB; 5,000 paragraphs:
  `too_large`) or empty (`bad_request`);
* `identities`: every 5 s one ask from each of 100 sockets of one host (one fair share, however many sockets),
  beside a socket that puts a new 1 KiB envelope part on every ask (dropped unanswered: `bad_envelope`);
* `expired`: asks whose deadline has passed, 20 a second: answered `no_answer` and never forwarded
  (`expired_unsent`);
* `long` and `small`: a client keeping 8 long text asks (~4,000 tokens) in flight, and beside it a small latent ask
  every 2 s, whose latency stays bounded by one long generate call (p95 below);
* `garbage`: mutated frames at the arbiter's three sockets and at each receiver, and now and then one message over
  the frame limit (dropped by the socket);
* `forged`: heartbeats of receivers nobody started (some under the real models' names), of roles on the wrong socket,
  and replies to request ids nobody issued;
* `sigstop`: every STOP_EVERY_S one receiver in turn is stopped (SIGSTOP) for longer than the arbiter waits for a
  silent process, then resumed (SIGCONT).

An ask is lost when the client heard nothing back (its own `timeout`); every frame at the arbiter's client socket
must be answered, garbage included. Process roles (arbiter, sender, receivers) report their peak memory and restarts.
A sender on the arbiter's backend is trusted on plain TCP (see receivers/arbiter.py), so no role impersonates one;
the soak runs on plain TCP, so a receiver's id is not bound to a key and no role plays an impostor of a real
receiver (that is a CURVE property, tested in tests/receivers/test_arbiter_curve_ids.py).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latentwire.protocol import (
    TextRequest,
    encode_frame,
)
from latentwire.trainer.tiny import tiny_checkpoint

from .soak_traffic import (
    PROCESSES,
    READY_S,
    RECEIVERS,
    TIMEOUT_S,
    Soak,
    contexts,
    expired,
    flood,
    forged,
    garbage,
    identities,
    long_asks,
    normal,
    oversized,
    sample_memory,
    small_asks,
    stop_receivers,
)

# ---- the run ----


def _seeds(ckpt: Path) -> list[bytes]:
    """Valid frames a receiver of `ckpt` answers, and one past its deadline (answered `expired`)."""
    from latentwire import checkpoint

    from .socket_fuzz import receiver_seeds

    cfg = checkpoint.read_config(ckpt)
    seeds = receiver_seeds(checkpoint.fingerprint(ckpt), int(cfg["encoder"]["m"]), int(cfg["encoder"]["d_z"]))
    late = TextRequest("late", "s", "Question: Who?\nContext: Ada.", max_new_tokens=2, deadline=time.time() - 1.0)
    return [*seeds, encode_frame(late)]


def _final_check(system: Any) -> bool:
    """After the roles: both receivers back, and one ask answered in full."""
    with system.client() as c:
        c.wait_ready(60, receivers=len(RECEIVERS))
        end = time.monotonic() + 30
        while time.monotonic() < end:
            a = c.ask("Who wrote it?", "Ada Lovelace wrote it.", quant="int8", max_new_tokens=4)
            if a.ok and not a.degraded:
                return True
            time.sleep(1.0)
    return False


def _restarts(log: Path) -> dict[str, int]:
    text = log.read_text(errors="replace")
    return {name: max(0, text.count(f"| {name} started (pid=") - 1) for name in PROCESSES}


def run(
    seconds: float, ckpt: str | Path | None = None, seed: int = 0, out: Callable[[str], None] | None = print
) -> dict:
    """Soak the system for `seconds`; returns (and prints, unless `out` is None) the figures per role."""
    from latentwire.processes.up import LocalSystem

    with tempfile.TemporaryDirectory(prefix="latentwire-soak-") as tmp:
        ckpt = Path(ckpt) if ckpt else tiny_checkpoint(Path(tmp) / "ckpt")
        log = Path(tmp) / "up.log"
        with LocalSystem(ckpt, RECEIVERS, log=log, timeout=TIMEOUT_S, ready_timeout=READY_S) as system:
            addresses = [v for v in system.env.values() if v.startswith("tcp://")]
            assert all(v.startswith("tcp://127.0.0.1:") for v in addresses), addresses  # loopback only
            start = time.monotonic()
            s = Soak(system, start + seconds, random.Random(seed), _seeds(ckpt))
            roles = [normal, oversized, flood, contexts, identities, expired, long_asks, small_asks, garbage, forged]
            roles.append(sample_memory)
            threads = [threading.Thread(target=_guard, args=(r, s), name=r.__name__) for r in roles]
            threads.append(threading.Thread(target=_guard, args=(stop_receivers, s, start), name="sigstop"))
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            took = time.monotonic() - start
            final_ok = _final_check(system)
            with system.client() as c:
                status = c.status(timeout=5.0)
            arbiter = dict(status.info) if status else {}
        result = _result(s, seconds, took, final_ok, arbiter, _restarts(log), seed)
    if out is not None:
        out(report(result))
    return result


def _guard(role: Callable[..., None], *args: Any) -> None:
    """A role that fails is a finding, not a reason to stop the others: say so and count it."""
    try:
        role(*args)
    except Exception as e:  # noqa: BLE001 - reported in the figures
        print(f"soak: role {role.__name__} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        args[0].tally("errors").failed += 1


def _result(
    s: Soak, seconds: float, took: float, final_ok: bool, arbiter: dict, restarts: dict[str, int], seed: int
) -> dict:
    counters = ("served", "degraded", "failed", "busy", "late", "late_reply", "error.expired", "internal_error")
    counters += ("expired_unsent", "bad_envelope", "bad_client_frame")
    return {
        "seconds": seconds,
        "took_s": round(took, 1),
        "seed": seed,
        "roles": {name: t.summary() for name, t in sorted(s.tallies.items())},
        "processes": {n: {"peak_rss_mb": s.peaks.get(n), "restarts": restarts.get(n, 0)} for n in PROCESSES},
        "stops": len(s.stops),
        "final_ok": final_ok,
        "arbiter": {k: arbiter.get(k, 0) for k in counters},
    }


COLUMNS = (
    ("role", 10),
    ("sent", 6),
    ("lost", 5),
    ("failed", 6),
    ("degraded", 8),
    ("p50_s", 7),
    ("p95_s", 7),
    ("peak_rss_mb", 11),
)


def _row(*values: object) -> str:
    """One line of the table: the role left-aligned, the figures right-aligned, `-` where a figure does not apply."""
    cells = ["-" if v is None else str(v) for v in values]
    widths = [w for _, w in COLUMNS]
    return " ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def report(r: dict) -> str:
    """The figures as a table: traffic roles (lost / degraded / p50 / p95), then process roles (peak RSS, restarts)."""
    lines = [f"soak: {r['took_s']} s on tiny models over loopback (seed {r['seed']}), {r['stops']} receiver stops"]
    lines.append(_row(*(name for name, _ in COLUMNS)))
    for name, t in r["roles"].items():
        lines.append(_row(name, t["sent"], t["lost"], t["failed"], t["degraded"], t["p50_s"], t["p95_s"], None))
    for name, p in r["processes"].items():
        lines.append(_row(name, None, None, None, None, None, None, p["peak_rss_mb"]) + f"  restarts {p['restarts']}")
    counters = ", ".join(f"{k} {v}" for k, v in r["arbiter"].items())
    lines.append(f"arbiter: {counters}; final ask answered in full: {r['final_ok']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="how long to soak")
    ap.add_argument("--seconds", type=float, default=None, help="how long to soak, in seconds (overrides --minutes)")
    ap.add_argument("--ckpt", default=None, help="checkpoint of the tiny models (default: build one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    a = ap.parse_args(argv)
    result = run(a.seconds if a.seconds is not None else a.minutes * 60.0, a.ckpt, a.seed)
    if a.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
