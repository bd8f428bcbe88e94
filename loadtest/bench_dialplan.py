"""Benchmark: authenticated calls/s to a gateway through a 1,000-rule dial plan, beside
calls/s between phones, on the same node in the same run.

One node on loopback gets a dial plan of ``--rules`` rules (``9NNNxxxxxxx`` for NNN =
000..., each needing the ``local`` permission that every caller has) and one gateway, a
SIPp UAS; a phone (another SIPp UAS) registers as ``user0``. A SIPp UAC then places
``--calls`` authenticated calls to the phone, and as many to ``9555xxxxxxx`` (rule 555 of
the plan, strip 1) through the gateway: INVITE, 407, ACK, INVITE with credentials, 100,
180, 200, ACK, BYE, 200, every message through the node. Prints calls/s and the node's
CPU per call for both. The node runs on core 0 and SIPp on core 1 (``taskset``), so the
load generator does not take the node's CPU. Run from the repository root:

    python loadtest/bench_dialplan.py --calls 5000 --rate 400

Bounded: each SIPp run stops after ``--calls`` calls or ``--timeout`` seconds.
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loadtest.bench_call import Uas, register_contact, write_call_inf
from loadtest.bench_register import cpu_seconds
from loadtest.harness import SIPP_BUFFERS, NodeProcess, free_port, run_sipp, write_users_csv

NODE_CPU = ("taskset", "-c", "0")
LOAD_CPU = ("taskset", "-c", "1")
NUMBER = "95551234567"


def dialplan_toml(rules: int, gateway_port: int, callers: list[str]) -> str:
    """A ``[dialplan]`` of ``rules`` rules to one gateway, ``local`` for every caller."""
    lines = [
        "[dialplan]",
        "probe_interval = 0",
        "",
        "[[dialplan.gateways]]",
        'name = "gw"',
        'host = "127.0.0.1"',
        f"port = {gateway_port}",
        "",
    ]
    for k in range(rules):
        lines += [
            "[[dialplan.rules]]",
            f'pattern = "9{k:03d}xxxxxxx"',
            "strip = 1",
            'gateways = ["gw"]',
            'permission = "local"',
            "",
        ]
    for user in callers:
        lines += [f"[dialplan.users.{user}]", 'permissions = ["local"]', ""]
    return "\n".join(lines)


def place(node, work: str, rows, callee: str, args) -> tuple:
    """``(SippResult, node CPU seconds)`` of ``args.calls`` calls to ``callee``."""
    inf = os.path.join(work, f"calls-{callee}.csv")
    write_call_inf(inf, rows, node.domain, callee)
    cpu0 = cpu_seconds(node.proc.pid)
    res = run_sipp(
        "uac_auth_call.xml",
        f"{node.address}:{node.port}",
        work,
        inf=inf,
        calls=args.calls,
        rate=args.rate,
        limit=args.limit,
        timeout=args.timeout,
        extra=SIPP_BUFFERS,
        prefix=LOAD_CPU,
    )
    return res, cpu_seconds(node.proc.pid) - cpu0


def report(name: str, res, cpu: float, rate: int) -> str:
    secs = res.elapsed
    return (
        f"{name}: {res.successful} ok, {res.failed} failed, {res.retransmissions} "
        f"retransmissions in {secs:.2f} s; {res.successful / secs:.0f} calls/s "
        f"(offered {rate}/s); node CPU {cpu:.2f} s = "
        f"{1e6 * cpu / max(1, res.successful):.0f} us per call\n"
    )


def main() -> int:
    """Run both call kinds on one node and print their figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--rate", type=int, default=400, help="offered calls/s")
    ap.add_argument("--limit", type=int, default=2000, help="SIPp concurrent calls")
    ap.add_argument("--callers", type=int, default=200)
    ap.add_argument("--rules", type=int, default=1000)
    ap.add_argument("--timeout", type=int, default=180)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tandem-bench-dialplan-") as work:
        gateway_port, phone_port = free_port(), free_port()
        users = os.path.join(work, "users.csv")
        rows = write_users_csv(users, args.callers + 1)
        node = NodeProcess(
            work,
            prefix=NODE_CPU,
            extra=dialplan_toml(args.rules, gateway_port, [u for u, _ in rows[1:]]),
        )
        out = node.run_cli("user", "import", users)
        if out.returncode:
            sys.stderr.write(out.stderr)
            return 1
        node.start(ready_timeout=60)
        phone = gateway = None
        try:
            if not register_contact(node, rows[0][0], rows[0][1], phone_port, work):
                sys.stderr.write("could not register the phone\n")
                return 1
            phone = Uas("uas_answer.xml", phone_port, work, prefix=LOAD_CPU)
            gateway = Uas("uas_answer.xml", gateway_port, work, prefix=LOAD_CPU)
            between = place(node, work, rows[1:], rows[0][0], args)
            dialled = place(node, work, rows[1:], NUMBER, args)
        finally:
            for uas in (phone, gateway):
                if uas is not None:
                    uas.stop()
            node.stop()
    sys.stdout.write(report("calls between phones", *between, args.rate))
    sys.stdout.write(report(f"calls to a gateway through {args.rules} rules", *dialled, args.rate))
    return 0 if between[0].failed == 0 and dialled[0].failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
