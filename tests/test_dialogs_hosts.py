"""Calls survive their node on separate hosts (network namespaces): the issue's test of
``tests/test_dialogs_cluster.py`` with each node on its own host and the phones on a
third, so the survivor's probes and the phones' BYEs cross a real network."""

from tests.netns import network_or_skip
from tests.test_dialogs_cluster import CALLS, survive_failover, two_nodes


def test_calls_of_a_killed_host_are_ended_by_bye_through_the_other(tmp_path):
    net = network_or_skip(["node1", "node2", "phones"])
    try:
        work = str(tmp_path)
        hosts = [(net[f"node{k}"].address, tuple(net[f"node{k}"].prefix)) for k in (1, 2)]
        cluster, rows = two_nodes(work, CALLS + 1, hosts)
        phones = net["phones"]
        survive_failover(
            cluster,
            rows,
            work,
            phones=phones.address,
            prefix=tuple(phones.prefix),
            ports=(23000, 23001),
        )
    finally:
        net.close()
