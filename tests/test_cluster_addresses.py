"""The cluster's names and node addresses (sipcore.cluster_addresses)."""

import tomllib

import pytest

from actors.config import ConfigError, cluster_addresses, parse_config
from sipcore.cluster_addresses import ClusterAddresses
from sipcore.uri import parse_uri

CLUSTER = ClusterAddresses(
    ["example.test", "alias.test"], [("127.0.0.11", 5060), ("127.0.0.12", 5070), ("::1", 5060)]
)


@pytest.mark.parametrize(
    "uri",
    [
        "sip:bob@example.test",
        "sip:bob@EXAMPLE.Test.",
        "sip:bob@alias.test:5099",
        "sip:bob@127.0.0.11",
        "sip:bob@127.0.0.11:5060",
        "sip:bob@127.0.0.12:5070",
        "sip:bob@[::1]",
        "sip:bob@10.0.0.1:5070;maddr=127.0.0.12",
        "sips:bob@example.test",
    ],
)
def test_points_here(uri):
    assert CLUSTER.points_here(parse_uri(uri))


@pytest.mark.parametrize(
    "uri",
    [
        "sip:bob@127.0.0.11:5062",
        "sip:bob@127.0.0.12",
        "sip:bob@10.0.0.1",
        "sip:bob@example.test.evil",
        "tel:+15551234567",
        "sip:bob@127.0.0.1:5060",
    ],
)
def test_does_not_point_here(uri):
    assert not CLUSTER.points_here(parse_uri(uri))


@pytest.mark.parametrize(
    "uri",
    [
        "sip:alice@example.test.",
        "sip:alice@Example.TEST",
        "sip:alice@alias.test",
        "sip:alice@127.0.0.12",
        "sip:alice@127.0.0.11:5999",
        "sip:alice@[::1]:5070",
    ],
)
def test_names_domain_in_any_spelling(uri):
    assert CLUSTER.names_domain(parse_uri(uri))


def test_a_stranger_is_not_the_domain():
    assert not CLUSTER.names_domain(parse_uri("sip:alice@other.test"))
    assert not CLUSTER.names_domain(parse_uri("tel:911"))


CONFIG = """
[node]
id = "node1"
[sip]
address = "127.0.0.11"
domain = "example.test"
aliases = ["alias.test"]
[[peers]]
id = "node2"
bus = "tcp://127.0.0.12:7001"
snapshot = "tcp://127.0.0.12:7002"
sip = "{sip}"
"""


def test_config_knows_every_node():
    cfg = parse_config(tomllib.loads(CONFIG.format(sip="127.0.0.12:5070")))
    addresses = cluster_addresses(cfg)
    assert addresses.nodes == {("127.0.0.11", 5060), ("127.0.0.12", 5070)}
    assert addresses.names == {"example.test", "alias.test"}
    assert (cfg.emergency_numbers, cfg.max_branches) == (["911", "112"], 16)


@pytest.mark.parametrize("sip", ["127.0.0.12", "127.0.0.12:0", ":5060", "host:port"])
def test_a_malformed_peer_sip_address_is_refused(sip):
    with pytest.raises(ConfigError, match="sip must be host:port"):
        parse_config(tomllib.loads(CONFIG.format(sip=sip)))


def test_limits_are_checked():
    text = CONFIG.format(sip="127.0.0.12:5070")
    with pytest.raises(ConfigError, match="max_branches"):
        parse_config(tomllib.loads(text + "[limits]\nmax_branches = 0\n"))
    with pytest.raises(ConfigError, match="emergency_numbers"):
        parse_config(
            tomllib.loads(text.replace('aliases = ["alias.test"]', "emergency_numbers = [911]"))
        )
