"""Benchmark: authenticated REGISTER/s through one node, driven by SIPp.

Starts a node on loopback with N users, has SIPp register them (REGISTER,
401, REGISTER with digest, 200) at a fixed offered rate, and prints the
completed authenticated registrations per second, failures,
retransmissions and the node's CPU use. Run from the repository root:

    python loadtest/bench_register.py --users 30000 --rate 8000

The run is bounded: SIPp stops after the users are registered or after
``--timeout`` seconds.
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loadtest.harness import SIPP_BUFFERS, NodeProcess, run_sipp, write_users_csv
from loadtest.report import format_rows, sipp_row


def cpu_times(pid: int) -> tuple[float, float]:
    """``(user, system)`` CPU seconds of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process, from /proc."""
    return sum(cpu_times(pid))


def _sum_times(pids: list[int]) -> tuple[float, float]:
    """``cpu_times`` summed over ``pids``."""
    times = [cpu_times(pid) for pid in pids]
    return sum(t[0] for t in times), sum(t[1] for t in times)


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (the node's challenge front)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def write_register_inf(path: str, rows, domain: str, expires: int = 3600) -> None:
    """SIPp injection rows for ``register_auth.xml``."""
    with open(path, "w") as f:
        f.write("SEQUENTIAL\n")
        for u, p in rows:
            f.write(f"{u};{domain};[authentication username={u} password={p}];{expires}\n")


def main() -> int:
    """Run the benchmark and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=30000)
    ap.add_argument("--rate", type=int, default=8000, help="offered registrations/s")
    ap.add_argument("--limit", type=int, default=3000, help="SIPp concurrent calls")
    ap.add_argument("--timeout", type=int, default=120)
    ap.add_argument("--database", help="database URL (default: SQLite in a temp folder)")
    ap.add_argument(
        "--front",
        action="store_true",
        help="run the node with its challenge front (sip.challenge_front)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tandem-bench-") as work:
        node = NodeProcess(work, database=args.database, front=args.front)
        rows = write_users_csv(os.path.join(work, "users.csv"), args.users)
        out = node.run_cli("user", "import", os.path.join(work, "users.csv"))
        if out.returncode:
            sys.stderr.write(out.stderr)
            return 1
        inf = os.path.join(work, "register.csv")
        write_register_inf(inf, rows, node.domain)
        node.start()
        try:
            user0, system0 = cpu_times(node.proc.pid)
            fronts = children(node.proc.pid)
            front_user0, front_system0 = _sum_times(fronts)
            res = run_sipp(
                "register_auth.xml",
                f"{node.address}:{node.port}",
                work,
                inf=inf,
                calls=args.users,
                rate=args.rate,
                limit=args.limit,
                timeout=args.timeout,
                extra=SIPP_BUFFERS,
                rtt=True,
            )
            user, system = cpu_times(node.proc.pid)
            user, system = user - user0, system - system0
            cpu = user + system
            front_user, front_system = _sum_times(fronts)
            front_user, front_system = front_user - front_user0, front_system - front_system0
            front_cpu = front_user + front_system
        finally:
            node.stop()
        # The front logs what it answered and what it passed on as it stops.
        front_stats = [
            line.split("challenge front stopped: ", 1)[1]
            for line in node.log_tail(200).splitlines()
            if "challenge front stopped: " in line
        ]
    secs = res.elapsed
    sys.stdout.write(
        f"authenticated REGISTER: {res.successful} ok, {res.failed} failed, "
        f"{res.retransmissions} retransmissions in {secs:.2f} s (SIPp wall time)\n"
        f"throughput: {res.successful / secs:.0f} REGISTER/s (offered {args.rate}/s)\n"
        f"node CPU: {cpu:.2f} s = {100 * cpu / secs:.0f}% of one core "
        f"(user {user:.2f} s, system {system:.2f} s)\n"
        + (
            f"challenge front CPU: {front_cpu:.2f} s = {100 * front_cpu / secs:.0f}% of one core "
            f"(user {front_user:.2f} s, system {front_system:.2f} s)\n"
            if fronts
            else ""
        )
        + "".join(f"challenge front: {stats}\n" for stats in front_stats)
        + f"{1e6 * (cpu + front_cpu) / max(1, res.successful):.0f} us of node CPU "
        "per authenticated registration\n"
        f"SIPp CPU: {res.cpu:.2f} s = {100 * res.cpu / secs:.0f}% of one core\n"
        "in the columns of a Locust run's report (loadtest/report.py):\n"
        + "\n".join(format_rows([sipp_row("REGISTER register", res)]))
        + "\n"
    )
    return 0 if res.failed == 0 and res.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
