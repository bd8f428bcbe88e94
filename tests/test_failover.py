"""Calls survive a dead node: a phone registered on A is called through B after A dies."""

import os
import time

from loadtest.bench_call import Uas, register_contact, write_call_inf
from loadtest.harness import Cluster, free_port, run_sipp, write_users_csv

CALLS = 20


def test_phone_registered_on_killed_node_is_called_through_another(tmp_path):
    work = str(tmp_path)
    cluster = Cluster(
        work, n=3, settings={"heartbeat": 0.2, "suspect_after": 0.6, "dead_after": 1.5}
    )
    rows = write_users_csv(os.path.join(work, "users.csv"), 20)
    cluster.provision(os.path.join(work, "users.csv"))
    cluster.start()
    uas = None
    try:
        assert cluster.wait_synced(15)
        a, b = cluster.nodes[0], cluster.nodes[1]
        port = free_port()
        assert register_contact(a, "user0", "pw0", port, work)
        converged, digests = cluster.wait_converged(5)
        assert converged, digests
        a.kill()
        uas = Uas("uas_answer.xml", port, work)
        inf = os.path.join(work, f"calls-{time.monotonic_ns()}.csv")
        write_call_inf(inf, rows[1:], b.domain, "user0")
        res = run_sipp(
            "uac_auth_call.xml",
            f"{b.address}:{b.port}",
            work,
            inf=inf,
            calls=CALLS,
            rate=20,
            limit=20,
            timeout=60,
        )
        assert (res.successful, res.failed) == (CALLS, 0), res.stderr
    finally:
        if uas is not None:
            uas.stop()
        cluster.stop()
