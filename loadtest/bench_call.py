"""Benchmark: authenticated calls/s through one node's proxy, driven by SIPp.

Starts a node on loopback with N callers and one callee, registers the
callee's contact from the port a SIPp UAS then listens on, and has a SIPp
UAC place calls at a fixed offered rate: INVITE, 407, ACK, INVITE with
digest credentials, 100, 180, 200, ACK, BYE, 200, every message through
the node (Record-Route). Prints completed calls per second, failures,
retransmissions and the node's CPU use. Run from the repository root:

    python loadtest/bench_call.py --calls 30000 --rate 1000

The run is bounded: SIPp stops after ``--calls`` calls or ``--timeout``
seconds. The helpers (``Uas``, ``register_contact``, ``write_call_inf``)
are shared with ``tests/test_proxy.py``.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loadtest.bench_register import cpu_seconds, write_register_inf
from loadtest.harness import (
    SIPP_BUFFERS,
    SIPP_DIR,
    NodeProcess,
    _last_stats,
    free_port,
    run_sipp,
    write_users_csv,
)
from loadtest.report import format_rows, sipp_row


#: SIPp socket buffers (bytes): its 64 KB default drops datagrams in bursts
def write_call_inf(path: str, callers, domain: str, callee: str) -> None:
    """SIPp injection rows for ``uac_auth_call.xml``/``uac_cancel.xml``: one per caller
    of ``domain``; ``callee`` is a user of ``domain`` or a ``user@other.domain``."""
    target = callee if "@" in callee else f"{callee}@{domain}"
    with open(path, "w") as f:
        f.write("SEQUENTIAL\n")
        for user, pw in callers:
            f.write(f"{user};{domain};{target};[authentication username={user} password={pw}]\n")


def register_contact(
    node, user: str, password: str, port: int, workdir: str, transport: str = "u1"
) -> bool:
    """Register ``user`` with a contact on local ``port`` (where a UAS will listen)."""
    inf = os.path.join(workdir, f"reg-{user}-{port}.csv")
    write_register_inf(inf, [(user, password)], node.domain)
    res = run_sipp(
        "register_auth.xml",
        f"{node.address}:{node.port}",
        workdir,
        inf=inf,
        calls=1,
        rate=10,
        local_port=port,
        transport=transport,
        timeout=20,
    )
    return res.successful == 1


class Uas:
    """A SIPp UAS scenario running in the background on one port."""

    def __init__(
        self,
        scenario: str,
        port: int,
        workdir: str,
        calls: int = 0,
        address: str = "127.0.0.1",
        transport: str = "u1",
        prefix: tuple = (),
        args: tuple = (),
    ):
        self.port = port
        self.stf = os.path.join(workdir, f"uas-{port}-{time.monotonic_ns()}.csv")
        sf = scenario if os.path.isabs(scenario) else os.path.join(SIPP_DIR, scenario)
        cmd = [
            *prefix,
            "sipp",
            "-sf",
            sf,
            "-i",
            address,
            "-p",
            str(port),
            "-t",
            transport,
            "-nostdin",
            "-trace_stat",
            "-stf",
            self.stf,
            "-fd",
            "1",
            "-max_retrans",
            "5",
            "-recv_timeout",
            "20s",
            *SIPP_BUFFERS,
            *args,
        ]
        if calls:
            cmd += ["-m", str(calls)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=workdir
        )

    def stop(self, timeout: float = 10.0) -> dict:
        """Stop SIPp (gracefully, then by force) and return its last statistics."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return _last_stats(self.stf)

    def wait(self, timeout: float) -> dict:
        """Wait (bounded) for SIPp to finish its ``calls``; return its statistics."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        return self.stop()


def main() -> int:
    """Run the benchmark and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=30000)
    ap.add_argument("--rate", type=int, default=1000, help="offered calls/s")
    ap.add_argument("--limit", type=int, default=2000, help="SIPp concurrent calls")
    ap.add_argument("--callers", type=int, default=1000)
    ap.add_argument("--timeout", type=int, default=180)
    ap.add_argument("--transport", default="u1", help="SIPp transport (u1, t1, un)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tandem-bench-call-") as work:
        node = NodeProcess(work)
        rows = write_users_csv(os.path.join(work, "users.csv"), args.callers + 1)
        out = node.run_cli("user", "import", os.path.join(work, "users.csv"))
        if out.returncode:
            sys.stderr.write(out.stderr)
            return 1
        callee, callee_pw = rows[0]
        inf = os.path.join(work, "calls.csv")
        write_call_inf(inf, rows[1:], node.domain, callee)
        node.start()
        uas = None
        try:
            port = free_port()
            if not register_contact(node, callee, callee_pw, port, work):
                sys.stderr.write("could not register the callee\n")
                return 1
            uas = Uas("uas_answer.xml", port, work)
            cpu0 = cpu_seconds(node.proc.pid)
            res = run_sipp(
                "uac_auth_call.xml",
                f"{node.address}:{node.port}",
                work,
                inf=inf,
                calls=args.calls,
                rate=args.rate,
                limit=args.limit,
                transport=args.transport,
                timeout=args.timeout,
                extra=SIPP_BUFFERS,
                rtt=True,
            )
            cpu = cpu_seconds(node.proc.pid) - cpu0
        finally:
            uas_stats = uas.stop() if uas is not None else {}
            node.stop()
    secs = res.elapsed
    sys.stdout.write(
        f"authenticated calls (INVITE/407/ACK/INVITE/100/180/200/ACK/BYE/200): "
        f"{res.successful} ok, {res.failed} failed, {res.retransmissions} retransmissions "
        f"in {secs:.2f} s (SIPp wall time); UAS: {uas_stats.get('SuccessfulCall(C)', '?')} ok, "
        f"{uas_stats.get('FailedCall(C)', '?')} failed\n"
        f"throughput: {res.successful / secs:.0f} calls/s (offered {args.rate}/s)\n"
        f"node CPU: {cpu:.2f} s = {100 * cpu / secs:.0f}% of one core, "
        f"{1e6 * cpu / max(1, res.successful):.0f} us per call\n"
        "in the columns of a Locust run's report (loadtest/report.py):\n"
        + "\n".join(format_rows([sipp_row("INVITE setup", res)]))
        + "\n"
    )
    return 0 if res.failed == 0 and res.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
