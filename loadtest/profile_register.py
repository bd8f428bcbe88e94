"""Profile the REGISTER hot path of one node in-process, without SIPp.

Builds a real node (SQLite in a temporary folder, N users), then feeds its
transport (``Transport.receive``) the datagrams SIPp's ``register_auth.xml`` sends: for each user a
REGISTER without credentials, then one with digest credentials computed
for a nonce the node issued. Responses go out through the node's real UDP
socket to a sink socket nobody reads. Prints the CPU time per
authenticated registration, so a change to the hot path can be judged
without the noise of a second process; ``--profile`` adds a cProfile
listing sorted by own time. Run from the repository root:

    python loadtest/profile_register.py --users 20000
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import cProfile  # noqa: E402
import hashlib  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from actors.config import parse_config  # noqa: E402
from actors.node import Node  # noqa: E402
from loadtest.harness import free_port  # noqa: E402
from store.models import close_store, init_store  # noqa: E402
from store.users import import_users_csv  # noqa: E402

DOMAIN = "example.test"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def registration(i: int, src_port: int, nonce: str) -> tuple[bytes, bytes]:
    """The two datagrams of user ``i``'s registration, as SIPp writes them."""
    user = f"user{i}"
    common = (
        f"Via: SIP/2.0/UDP 127.0.0.1:{src_port};branch=z9hG4bK-{i}-%d;rport\r\n"
        f"From: <sip:{user}@{DOMAIN}>;tag=1234SIPpTag{i}\r\n"
        f"To: <sip:{user}@{DOMAIN}>\r\n"
        f"Call-ID: {i}-1234@127.0.0.1\r\n"
        "CSeq: %d REGISTER\r\n"
        f"Contact: <sip:{user}@127.0.0.1:{src_port};transport=UDP>\r\n"
    )
    tail = "Max-Forwards: 70\r\nExpires: 3600\r\nUser-Agent: SIPp\r\nContent-Length: 0\r\n\r\n"
    first = f"REGISTER sip:{DOMAIN} SIP/2.0\r\n" + common % (1, 1) + tail
    ha1 = _md5(f"{user}:{DOMAIN}:pw{i}")
    cnonce = f"{i:08x}"
    resp = _md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{_md5(f'REGISTER:sip:{DOMAIN}')}")
    auth = (
        f'Authorization: Digest username="{user}",realm="{DOMAIN}",cnonce="{cnonce}",'
        f'nc=00000001,qop=auth,uri="sip:{DOMAIN}",nonce="{nonce}",response="{resp}",'
        "algorithm=MD5\r\n"
    )
    second = f"REGISTER sip:{DOMAIN} SIP/2.0\r\n" + common % (2, 2) + auth + tail
    return first.encode(), second.encode()


def main() -> int:
    """Build the node, feed it, print the cost per registration."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument(
        "--register",
        type=int,
        default=None,
        help="register only the first N users (default: all); comparing two "
        "counts under valgrind gives instructions per registration",
    )
    ap.add_argument(
        "--credentials-only",
        action="store_true",
        help="feed only the REGISTERs with credentials, as a node whose "
        "challenge front answers the others gets them",
    )
    ap.add_argument("--burst", type=int, default=64, help="datagrams handled between yields")
    ap.add_argument("--profile", action="store_true", help="print a cProfile listing")
    args = ap.parse_args()
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "WARNING"))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    src_port = sink.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="tandem-prof-") as work:
        csv = os.path.join(work, "users.csv")
        with open(csv, "w") as f:
            f.write("username,password\n")
            f.writelines(f"user{i},pw{i}\n" for i in range(args.users))
        cfg = parse_config(
            {
                "node": {"id": "prof", "data_dir": work},
                "sip": {"address": "127.0.0.1", "port": free_port(), "domain": DOMAIN},
                "auth": {"secret": "00" * 32},
                # every datagram comes from one address: no per-source limit
                "limits": {"udp_rate": 0},
                "database": {"url": f"sqlite:///{work}/tandem.db"},
            },
            work,
        )
        init_store(cfg.database)
        import_users_csv(csv, DOMAIN)
        close_store()
        node = Node(cfg)
        node.start()
        make_nonce = node.registrar.auth.nonces.make
        count = args.users if args.register is None else min(args.register, args.users)
        messages = [registration(i, src_port, make_nonce(time.time())) for i in range(count)]
        receive = node.transport.receive
        done = gevent.event.Event()

        def feed():
            burst = args.burst
            for k in range(0, len(messages), burst // 2):
                for first, second in messages[k : k + burst // 2]:
                    if not args.credentials_only:
                        receive(first, "127.0.0.1", src_port)
                    receive(second, "127.0.0.1", src_port)
                gevent.sleep(0)
            while node.registrar.inbox.qsize():
                gevent.sleep(0.001)
            done.set()

        prof = cProfile.Profile() if args.profile else None
        t0, c0 = time.perf_counter(), time.process_time()
        if prof:
            prof.enable()
        gevent.spawn(feed)
        done.wait(timeout=600)
        gevent.sleep(0.05)
        if prof:
            prof.disable()
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        stats = node.registrar.statistics()
        node.stop()
    ok = stats["ok"]
    sys.stdout.write(
        f"{ok} of {count} registered, {stats['challenged']} challenged here, "
        f"{stats['rejected']} rejected, {stats['commits']} commits\n"
        f"cpu {cpu:.2f} s, wall {wall:.2f} s: {1e6 * cpu / max(ok, 1):.0f} us "
        f"CPU per authenticated registration\n"
    )
    if prof:
        order = os.environ.get("PROFILE_SORT", "tottime")
        pstats.Stats(prof, stream=sys.stdout).sort_stats(order).print_stats(35)
    return 0 if ok == count else 1


if __name__ == "__main__":
    sys.exit(main())
