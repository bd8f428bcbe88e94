"""The Contact-or-flow rules of sipcore.nat and binding_target (RFC 3261 §16.5, RFC 5626)."""

import pytest

from sipcore.location import Binding
from sipcore.nat import is_outbound, nat_detected, use_flow
from sipcore.proxy import ProxySettings, binding_target


@pytest.mark.parametrize("contact, source, nat", [
    ("192.168.1.20", "203.0.113.7", True),       # RFC 1918 behind a NAT
    ("10.1.2.3", "198.51.100.1", True),
    ("172.31.0.9", "198.51.100.1", True),
    ("100.64.3.3", "198.51.100.1", True),        # RFC 6598 carrier-grade NAT
    ("fd00::5", "2001:db8::1", True),             # IPv6 unique local
    ("[fd00::5]", "2001:db8::1", True),
    ("169.254.7.7", "198.51.100.1", True),
    ("127.0.0.1", "203.0.113.7", True),          # loopback named from another host
    ("192.168.1.20", "192.168.1.20", False),     # same private network, reached directly
    ("127.0.4.9", "127.0.4.1", False),           # loopback from loopback: same host
    ("198.51.100.9", "203.0.113.7", False),      # a third party registered another device
    ("172.32.0.1", "198.51.100.1", False),       # just outside 172.16/12
    ("phone.example.net", "203.0.113.7", False),  # a name: RFC 3263 finds it
])
def test_nat_detected(contact, source, nat):
    assert nat_detected(contact, source) is nat


def test_outbound_needs_instance_and_reg_id():
    assert is_outbound("<urn:uuid:1>", 1)
    assert not is_outbound("<urn:uuid:1>", None)
    assert not is_outbound(None, None)


def test_modes():
    assert use_flow("always", "udp", "198.51.100.9", "203.0.113.7", False)
    assert not use_flow("never", "udp", "192.168.1.20", "203.0.113.7", False)
    assert use_flow("never", "udp", "198.51.100.9", "203.0.113.7", True)  # outbound: always
    assert not use_flow("auto", "udp", "203.0.113.7", "203.0.113.7", False)
    # a TCP connection from the Contact's own address reaches that device
    assert use_flow("auto", "tcp", "203.0.113.7", "203.0.113.7", False)
    assert not use_flow("auto", "tcp", "198.51.100.9", "203.0.113.7", False)


def _binding(contact, received, instance=None, reg_id=None):
    return Binding("sip:bob@example.test", contact, contact, 0, "c", 1, None, [], instance,
                   reg_id, received)


def test_udp_contact_on_another_port_is_the_target():
    """A phone sending from 40000 and listening on 5062 is called on 5062 (was its source)."""
    t = binding_target(_binding("sip:bob@127.0.4.2:5062", "udp:127.0.4.2:40000"))
    assert t.dest is None and t.uri == "sip:bob@127.0.4.2:5062"


def test_third_party_registration_is_called_on_its_contact():
    t = binding_target(_binding("sip:bob@198.51.100.9:5070", "udp:203.0.113.7:5060"))
    assert t.dest is None


def test_private_contact_goes_to_the_source():
    t = binding_target(_binding("sip:bob@192.168.1.20:5060", "udp:203.0.113.7:31000"))
    assert t.dest == ("udp", "203.0.113.7", 31000)
    t = binding_target(_binding("sip:bob@192.168.1.20:5060", "udp:203.0.113.7:31000"), "never")
    assert t.dest is None


def test_outbound_flow_and_its_limits():
    b = _binding("sip:bob@198.51.100.9:5070;ob", "udp:203.0.113.7:5060", "<urn:uuid:1>", 1)
    assert binding_target(b, "never").dest == ("udp", "203.0.113.7", 5060)
    # a flow never changes the transport nor carries a sips request
    b = _binding("sip:bob@198.51.100.9:5070;transport=tcp", "udp:203.0.113.7:5060",
                 "<urn:uuid:1>", 1)
    assert binding_target(b).dest is None
    b = _binding("sips:bob@198.51.100.9:5070", "tcp:203.0.113.7:5060", "<urn:uuid:1>", 1)
    assert binding_target(b).dest is None


def test_always_keeps_the_old_behaviour():
    t = binding_target(_binding("sip:bob@198.51.100.9:5070", "udp:203.0.113.7:5060"), "always")
    assert t.dest == ("udp", "203.0.113.7", 5060)


def test_settings_refuse_an_unknown_mode():
    with pytest.raises(ValueError, match="nat_handling"):
        ProxySettings("example.test", "127.0.0.1", 5060, nat_handling="sometimes")
