"""Calls survive their node (issue 17), with real node processes and SIPp at both ends.

20 calls are answered through node 1, whose Record-Route names the domain; node 2
knows their dialog records from the bus. Node 1 is killed (SIGKILL): node 2 takes
its calls over (probing both ends, which answer), each caller's BYE goes to node 2
along the Record-Route set, reaches the callee and is answered, and every record
is closed, with a ``bye`` call event of each call on node 2. A drain says a node
is not empty while it carries calls, and empty once they are over.
"""

import os
import subprocess
import time

from loadtest.bench_call import Uas
from loadtest.bench_register import write_register_inf
from loadtest.harness import (
    SIPP_BUFFERS,
    SIPP_DIR,
    Cluster,
    _last_stats,
    free_port,
    run_sipp,
    write_users_csv,
)

CALLS = 20


def wait_for(predicate, timeout: float, step: float = 0.1):
    """Poll ``predicate`` until it returns a true value, or ``timeout``; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def status(cluster, node) -> dict:
    from actors.bus import BusError

    try:
        return cluster.control(node, "status", brief=True)
    except BusError:
        return {}


def two_nodes(work: str, users: int, hosts: list | None = None) -> tuple:
    """Two nodes whose Record-Route names the domain, ``users`` users; started (``hosts``:
    as ``Cluster`` takes them)."""
    cluster = Cluster(
        work,
        n=2,
        settings={"heartbeat": 0.2, "suspect_after": 0.6, "dead_after": 1.5},
        extra='[dialogs]\nrecord_route = "example.test"\nprobe_timeout = 2',
        hosts=hosts,
    )
    rows = write_users_csv(os.path.join(work, "users.csv"), users)
    cluster.provision(os.path.join(work, "users.csv"))
    cluster.start()
    return cluster, rows


def start_calls(
    cluster,
    rows,
    work: str,
    calls: int,
    phones: str = "127.0.0.1",
    prefix: tuple = (),
    ports: tuple[int, int] | None = None,
):
    """A SIPp callee (user0) and a SIPp caller placing ``calls`` calls through node 1 that
    last 9 s, their later messages going to node 2; ``(uas, uac, its statistics file)``.
    ``phones`` is the phones' address, ``prefix`` runs them in another host (then give
    ``ports``: the callee's and the caller's)."""
    one, two = cluster.nodes
    assert cluster.wait_synced(15)
    port, uac_port = ports or (free_port(phones), free_port(phones))
    reg = os.path.join(work, "reg.csv")
    write_register_inf(reg, rows[:1], one.domain)
    res = run_sipp(
        "register_auth.xml",
        f"{one.address}:{one.port}",
        work,
        inf=reg,
        calls=1,
        local_ip=phones,
        local_port=port,
        timeout=20,
        prefix=prefix,
    )
    assert res.successful == 1, res.stderr
    assert cluster.wait_converged(5)[0]
    uas = Uas(
        "uas_answer_failover.xml",
        port,
        work,
        address=phones,
        prefix=prefix,
        args=("-aa", "-key", "survivor_host", two.address, "-key", "survivor_port", str(two.port)),
    )
    inf = os.path.join(work, "calls.csv")
    with open(inf, "w") as f:
        f.write("SEQUENTIAL\n")
        for user, pw in rows[1 : calls + 1]:
            f.write(
                f"{user};{one.domain};user0@{one.domain};"
                f"[authentication username={user} password={pw}];"
                f"{two.address};{two.port}\n"
            )
    stf = os.path.join(work, "uac.csv")
    uac = subprocess.Popen(
        [
            *prefix,
            "sipp",
            "-sf",
            os.path.join(SIPP_DIR, "uac_call_failover.xml"),
            "-m",
            str(calls),
            "-r",
            "20",
            "-l",
            str(calls),
            "-t",
            "u1",
            "-i",
            phones,
            "-p",
            str(uac_port),
            "-nostdin",
            "-trace_stat",
            "-stf",
            stf,
            "-fd",
            "1",
            "-aa",
            "-max_retrans",
            "5",
            "-recv_timeout",
            "20s",
            "-inf",
            inf,
            *SIPP_BUFFERS,
            f"{one.address}:{one.port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=work,
    )
    return uas, uac, stf


def stop(uas, uac, cluster) -> None:
    if uac is not None and uac.poll() is None:
        uac.kill()
        uac.wait(timeout=10)
    if uas is not None:
        uas.stop()
    cluster.stop()


def test_calls_of_a_killed_node_are_ended_by_bye_through_a_survivor(tmp_path):
    work = str(tmp_path)
    cluster, rows = two_nodes(work, CALLS + 1)
    survive_failover(cluster, rows, work)


def survive_failover(cluster, rows, work: str, **phones) -> None:
    """The issue's test on ``cluster`` (two nodes, ``CALLS + 1`` users in ``rows``,
    started); ``phones`` go to ``start_calls``. Stops the cluster."""
    one, two = cluster.nodes
    uas = uac = None
    try:
        uas, uac, stf = start_calls(cluster, rows, work, CALLS, **phones)
        # Every call answered through node 1, and its record known on node 2.
        assert wait_for(
            lambda: (
                status(cluster, one).get("calls") == CALLS
                and status(cluster, two).get("dialogs") == CALLS
            ),
            8,
        ), (status(cluster, one), status(cluster, two))
        rr = cluster.control(two, "calls", owner=one.id)
        assert rr["total"] == CALLS and all(
            c["answered_at"] >= c["started_at"] > 0 for c in rr["calls"]
        )
        # The route set names the domain (every node answers it), with the dialog token.
        assert all(c["route"].startswith("<sip:example.test;lr;dlg=") for c in rr["calls"])
        # A drain counts the calls: node 1 is not empty while they last.
        cluster.control(one, "drain", on=True)
        drained = status(cluster, one)
        assert (drained["draining"], drained["calls"], drained["drained"]) == (True, CALLS, False)
        one.kill()
        killed = time.monotonic()
        taken = wait_for(lambda: status(cluster, two).get("calls") == CALLS, 5, step=0.02)
        assert taken, status(cluster, two)
        print(
            f"\n{CALLS} calls of the killed node taken over by node 2 "
            f"{time.monotonic() - killed:.2f} s after the kill (dead_after 1.5 s)"
        )
        uac.wait(timeout=40)
        stats = _last_stats(stf)
        assert (int(stats["SuccessfulCall(C)"]), int(stats["FailedCall(C)"])) == (CALLS, 0), (
            uac.stderr.read().decode()[-2000:] if uac.stderr else stats
        )
        after = status(cluster, two)
        assert (after["calls"], after["dialogs"]) == (0, 0), after
        assert after["dialog_stats"]["adopted"] == CALLS
        assert after["dialog_stats"]["unanswered"] == 0  # both ends answered the probes
        # A BYE event of every call on node 2, which closes its record (a retransmitted
        # BYE forwarded again makes a second event; the master folds them into one end).
        calls = {c["call_id"] for c in rr["calls"]}

        def byes() -> set:
            events = cluster.control(two, "events", since=0, limit=1000)["events"]
            return {e["call_id"] for e in events if e["kind"] == "bye"}

        assert wait_for(lambda: byes() == calls, 3), calls - byes()
        assert int(uas.stop()["SuccessfulCall(C)"]) == CALLS
        cluster.control(two, "drain", on=True)
        assert wait_for(lambda: status(cluster, two).get("drained"), 5), status(cluster, two)
    finally:
        stop(uas, uac, cluster)


def test_a_call_whose_caller_vanished_with_its_node_is_ended_by_the_survivor(tmp_path):
    """Node 1 and the caller die together: node 2's probe of the caller goes unanswered,
    so it sends BYE both ways; the callee answers its BYE, and the call ends as a
    ``lost`` event (its record: ``node failure``)."""
    work = str(tmp_path)
    calls = 5
    cluster, rows = two_nodes(work, calls + 1)
    one, two = cluster.nodes
    uas = uac = None
    try:
        uas, uac, _ = start_calls(cluster, rows, work, calls)
        assert wait_for(lambda: status(cluster, two).get("dialogs") == calls, 8), status(
            cluster, two
        )
        ids = {c["call_id"] for c in cluster.control(two, "calls")["calls"]}
        uac.kill()
        uac.wait(timeout=10)
        one.kill()
        # The callee gets each BYE (from node 2) and answers it: SIPp counts the call done.
        assert wait_for(
            lambda: int(_last_stats(uas.stf).get("SuccessfulCall(C)", 0) or 0) == calls, 15
        ), _last_stats(uas.stf)
        # Node 2 ends the records once both BYEs are done (the caller's goes unanswered).
        assert wait_for(lambda: status(cluster, two).get("dialogs") == 0, 6)
        after = status(cluster, two)
        assert (
            after["dialogs"],
            after["dialog_stats"]["unanswered"],
            after["dialog_stats"]["ended_here"],
        ) == (0, calls, calls), after

        def lost() -> set:
            events = cluster.control(two, "events", since=0, limit=1000)["events"]
            return {e["call_id"] for e in events if e["kind"] == "lost"}

        assert wait_for(lambda: lost() == ids, 3), ids - lost()
    finally:
        stop(uas, uac, cluster)


def test_a_restarted_node_learns_the_calls_in_progress_from_its_peer(tmp_path):
    """Node 2 restarts during 3 calls through node 1: its resync brings their records
    back (node 1 sends them again when asked for a snapshot); their BYEs end them."""
    work = str(tmp_path)
    calls = 3
    cluster, rows = two_nodes(work, calls + 1)
    one, two = cluster.nodes
    uas = uac = None
    try:
        uas, uac, stf = start_calls(cluster, rows, work, calls)
        assert wait_for(lambda: status(cluster, two).get("dialogs") == calls, 8), status(
            cluster, two
        )
        two.stop()
        two.start()
        assert cluster.wait_synced(10)
        assert wait_for(lambda: status(cluster, two).get("dialogs") == calls, 3), status(
            cluster, two
        )
        uac.wait(timeout=30)
        assert int(_last_stats(stf)["SuccessfulCall(C)"]) == calls
        assert wait_for(
            lambda: (
                status(cluster, one).get("dialogs") == 0
                and status(cluster, two).get("dialogs") == 0
            ),
            3,
        ), (status(cluster, one), status(cluster, two))
    finally:
        stop(uas, uac, cluster)
