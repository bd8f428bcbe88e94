"""Benchmark: a node offered more than it can take, before and after admission control.

Calls: authenticated calls through one node (``uac_auth_call.xml`` against a
SIPp UAS, as ``bench_call`` places them), offered at 1x, 1.5x and 2x the
node's capacity, for each source tree given (``--tree NAME=PATH``, e.g. the
main branch before the change and this tree); completed calls per second
and retransmissions at each. ``completed/s`` divides the calls completed by
SIPp's whole run, the tail included (a call that lost a message ends at
SIPp's 10 s receive timeout, so a few such calls double it);
``ok/offered s`` divides them by the seconds the load was offered: the
node's goodput, to compare with the capacity. The node runs on core 0 (``taskset -c 0``),
SIPp on core 1. Capacity is ``--capacity`` calls/s, or found first by
offering rising rates to the last tree until fewer than 97% of the offered
calls complete.

REGISTER flood (``--flood``): well-behaved phones register (REGISTER, 401,
REGISTER with digest, 200) from one address while a flooder sends
REGISTERs with digest credentials of unknown users from ``--flood-sources``
other addresses, each source under the per-source rate limit; the
registrations completed by the phones with and without the flood.

Run from the repository root (every run is bounded in calls and time):

    git worktree add /tmp/ovl-before 63e144d && ln -s $PWD/.venv /tmp/ovl-before/.venv
    python loadtest/bench_overload.py --tree before=/tmp/ovl-before --tree after=. --flood
"""

import argparse
import hashlib
import os
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loadtest.bench_call import Uas, register_contact, write_call_inf
from loadtest.bench_register import cpu_seconds, write_register_inf
from loadtest.harness import ROOT, SIPP_BUFFERS, NodeProcess, free_port, run_sipp, write_users_csv

SERVER = ("taskset", "-c", "0")
LOAD = ("taskset", "-c", "1")
DOMAIN = "example.test"
SIPP_EXTRA: tuple = ()


def call_run(root: str, work: str, rate: int, seconds: float, callers: int, limits: str) -> dict:
    """One node of tree ``root``, offered ``rate`` calls/s for ``seconds``: what SIPp saw."""
    os.makedirs(work, exist_ok=True)
    node = NodeProcess(work, root=root, prefix=SERVER, limits=limits)
    rows = write_users_csv(os.path.join(work, "users.csv"), callers + 1)
    out = node.run_cli("user", "import", os.path.join(work, "users.csv"))
    if out.returncode:
        raise RuntimeError(out.stderr)
    callee, callee_pw = rows[0]
    inf = os.path.join(work, "calls.csv")
    write_call_inf(inf, rows[1:], DOMAIN, callee)
    node.start()
    uas = None
    try:
        port = free_port()
        if not register_contact(node, callee, callee_pw, port, work):
            raise RuntimeError("could not register the callee")
        uas = Uas("uas_answer.xml", port, work, prefix=LOAD)
        cpu0 = cpu_seconds(node.proc.pid)
        calls = int(rate * seconds)
        res = run_sipp(
            "uac_auth_call.xml",
            f"{node.address}:{node.port}",
            work,
            inf=inf,
            calls=calls,
            rate=rate,
            limit=max(2000, rate * 40),
            timeout=seconds + 60,
            extra=(*SIPP_BUFFERS, *SIPP_EXTRA),
            prefix=LOAD,
        )
        cpu = cpu_seconds(node.proc.pid) - cpu0
    finally:
        if uas is not None:
            uas.stop()
        node.stop()
    return {
        "offered": rate,
        "calls": calls,
        "ok": res.successful,
        "failed": res.failed,
        "retrans": res.retransmissions,
        "secs": res.elapsed,
        "cps": res.successful / res.elapsed,
        "cpu": cpu,
        "503": int(res.stats.get("FailedUnexpectedMessage(C)", 0) or 0),
        "sipp_cpu": res.cpu,
        "timed_out": sum(
            int(res.stats.get(k, 0) or 0)
            for k in ("FailedMaxUDPRetrans(C)", "FailedTimeoutOnRecv(C)", "FailedTimeoutOnSend(C)")
        ),
        "goodput": res.successful / seconds,
    }


def find_capacity(
    root: str, work: str, start: int, step: int, seconds: float, callers: int, limits: str
) -> int:
    """The highest offered rate (``start``, ``start + step``...) at which 97% of the
    calls complete at the offered rate; when even ``start`` is too much, the calls per
    second completed at ``start``."""
    best = 0
    rate = start
    while rate < 10000:
        r = call_run(root, os.path.join(work, f"cap-{rate}"), rate, seconds, callers, limits)
        sys.stdout.write(
            f"  capacity probe: offered {rate}/s, {r['ok']}/{r['calls']} ok, "
            f"{r['cps']:.0f} calls/s, {r['retrans']} retransmissions\n"
        )
        sys.stdout.flush()
        if r["ok"] < 0.97 * r["calls"] or r["cps"] < 0.9 * rate:
            best = best or int(r["cps"])
            break
        best = rate
        rate += step
    return best


def flood_frames(n: int, domain: str, port: int) -> list[bytes]:
    """``n`` REGISTERs with digest credentials of unknown users (each a new user name)."""
    frames = []
    for i in range(n):
        user = f"nobody{i}"
        resp = hashlib.md5(user.encode()).hexdigest()
        frames.append(
            (
                f"REGISTER sip:{domain} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-fl{i};rport\r\n"
                f"From: <sip:{user}@{domain}>;tag=f{i}\r\nTo: <sip:{user}@{domain}>\r\n"
                f"Call-ID: flood-{i}@x\r\nCSeq: 2 REGISTER\r\n"
                f"Contact: <sip:{user}@127.0.0.1:{port}>\r\nMax-Forwards: 70\r\nExpires: 3600\r\n"
                f'Authorization: Digest username="{user}", realm="{domain}", '
                f'nonce="bm9ub25jZQ", uri="sip:{domain}", response="{resp}", '
                f'algorithm=MD5, qop=auth, nc=00000001, cnonce="c{i}"\r\n'
                f"Content-Length: 0\r\n\r\n"
            ).encode()
        )
    return frames


def flood(
    target: tuple[str, int], sources: int, rate: float, seconds: float, stop: threading.Event
) -> int:
    """Send the flood at ``rate`` datagrams/s in all from ``sources`` loopback
    addresses (127.0.200.x), round robin, for at most ``seconds``; the count sent."""
    socks = []
    for k in range(sources):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.0.{200 + k // 250}.{1 + k % 250}", 0))
        socks.append(s)
    frames = flood_frames(4096, DOMAIN, 9)
    sent = 0
    t0 = time.monotonic()
    try:
        while not stop.is_set():
            now = time.monotonic() - t0
            if now >= seconds:
                break
            due = int(now * rate)
            while sent < due:
                try:
                    socks[sent % sources].sendto(frames[sent % len(frames)], target)
                except OSError:
                    pass
                sent += 1
            time.sleep(0.002)
    finally:
        for s in socks:
            s.close()
    return sent


def flood_run(
    root: str, work: str, users: int, rate: int, flood_rate: float, sources: int, limits: str
) -> dict:
    """Phones registering at ``rate``/s, with the flood running: what they completed."""
    os.makedirs(work, exist_ok=True)
    node = NodeProcess(work, root=root, prefix=SERVER, limits=limits)
    rows = write_users_csv(os.path.join(work, "users.csv"), users)
    out = node.run_cli("user", "import", os.path.join(work, "users.csv"))
    if out.returncode:
        raise RuntimeError(out.stderr)
    inf = os.path.join(work, "reg.csv")
    write_register_inf(inf, rows, DOMAIN)
    node.start()
    stop = threading.Event()
    sent = [0]
    seconds = users / rate
    flooder = None
    try:
        if flood_rate:
            # The flooder is this Python process: pinned to core 1 with SIPp.
            os.sched_setaffinity(0, {1})
            flooder = threading.Thread(
                target=lambda: sent.__setitem__(
                    0, flood((node.address, node.port), sources, flood_rate, seconds + 60, stop)
                )
            )
            flooder.start()
            time.sleep(1.0)
        res = run_sipp(
            "register_auth.xml",
            f"{node.address}:{node.port}",
            work,
            inf=inf,
            calls=users,
            rate=rate,
            limit=users,
            timeout=seconds + 40,
            extra=SIPP_BUFFERS,
            prefix=LOAD,
        )
    finally:
        stop.set()
        if flooder is not None:
            flooder.join(timeout=10)
        node.stop()
    return {
        "users": users,
        "ok": res.successful,
        "failed": res.failed,
        "retrans": res.retransmissions,
        "secs": res.elapsed,
        "flood_sent": sent[0],
        "rps": res.successful / res.elapsed,
    }


def main() -> int:
    """Run the benchmark and print its tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--tree",
        action="append",
        default=[],
        help="NAME=PATH of a source tree to run (repeat; default: this tree)",
    )
    ap.add_argument("--capacity", type=int, default=0, help="calls/s (default: measured)")
    ap.add_argument("--probe-start", type=int, default=100)
    ap.add_argument("--probe-step", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0, help="offered load duration per run")
    ap.add_argument("--callers", type=int, default=1000)
    ap.add_argument("--loads", default="1,1.5,2")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the trees in turn (before, after, before, after...): the "
        "machine is noisy, so compare the pairs of a round",
    )
    ap.add_argument(
        "--limits",
        default="udp_rate = 0",
        help="[limits] of every node (a load generator is one source address)",
    )
    ap.add_argument("--flood", action="store_true", help="run the REGISTER flood too")
    ap.add_argument("--calls", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--flood-users", type=int, default=3000)
    ap.add_argument("--flood-rate", type=float, default=20000.0)
    ap.add_argument("--flood-sources", type=int, default=200)
    ap.add_argument("--register-rate", type=int, default=200)
    ap.add_argument(
        "--flood-limits",
        default="udp_rate = 500",
        help="[limits] of the flood runs: the phones share one address",
    )
    args = ap.parse_args()
    trees = [t.split("=", 1) for t in args.tree] or [["this", ROOT]]
    trees = [(name, os.path.abspath(path)) for name, path in trees]
    out = sys.stdout
    with tempfile.TemporaryDirectory(prefix="tandem-bench-overload-") as work:
        if args.calls:
            capacity = args.capacity or find_capacity(
                trees[-1][1],
                os.path.join(work, "probe"),
                args.probe_start,
                args.probe_step,
                min(args.seconds, 10.0),
                args.callers,
                args.limits,
            )
            out.write(f"capacity: {capacity} calls/s\n\n")
            out.write(
                "tree     load  offered/s  calls   ok     failed  503/unexp  timed out  "
                "retrans  secs   completed/s  ok/offered s  node cpu\n"
            )
            for rnd, (name, path) in ((k, t) for k in range(args.rounds) for t in trees):
                for load in [float(x) for x in args.loads.split(",")]:
                    rate = round(capacity * load)
                    r = call_run(
                        path,
                        os.path.join(work, f"{name}-{load}-{rnd}"),
                        rate,
                        args.seconds,
                        args.callers,
                        args.limits,
                    )
                    out.write(
                        f"{name:8} {load:4.1f}x {rate:9d} {r['calls']:6d} {r['ok']:6d} "
                        f"{r['failed']:7d} {r['503']:9d} {r['timed_out']:10d} "
                        f"{r['retrans']:8d} {r['secs']:6.1f} {r['cps']:11.0f} "
                        f"{r['goodput']:13.0f} {r['cpu']:8.1f}\n"
                    )
                    out.flush()
        if args.flood:
            out.write(
                f"\nREGISTER flood: {args.flood_users} phones at {args.register_rate}/s "
                f"from 127.0.0.1; flood {args.flood_rate:.0f}/s of unknown users from "
                f"{args.flood_sources} addresses\n"
            )
            out.write("tree     flood  ok     failed  retrans  secs   registered/s  flood sent\n")
            for name, path in trees:
                for flood_rate in (0.0, args.flood_rate):
                    r = flood_run(
                        path,
                        os.path.join(work, f"{name}-flood-{flood_rate}"),
                        args.flood_users,
                        args.register_rate,
                        flood_rate,
                        args.flood_sources,
                        args.flood_limits,
                    )
                    out.write(
                        f"{name:8} {'yes' if flood_rate else 'no':5}  {r['ok']:6d} "
                        f"{r['failed']:7d} {r['retrans']:8d} {r['secs']:6.1f} "
                        f"{r['rps']:12.0f}  {r['flood_sent']}\n"
                    )
                    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
