"""The SO_REUSEPORT program of ``actors.steering``, run by the real kernel on loopback."""

import socket

import pytest

from actors.steering import FRONT, NODE, SCAN, challenge_program, steer_challenges

AUTH = (
    'Authorization: Digest username="alice", realm="example.test", nonce="abc", '
    'uri="sip:example.test", response="0123456789abcdef0123456789abcdef"\r\n'
)


def register(extra: str = "", pad: int = 0) -> bytes:
    return (
        "REGISTER sip:example.test SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1\r\n"
        + ("X-Pad: " + "p" * pad + "\r\n" if pad else "")
        + "From: <sip:alice@example.test>;tag=1\r\nTo: <sip:alice@example.test>\r\n"
        "Call-ID: c1\r\nCSeq: 1 REGISTER\r\n" + extra + "Content-Length: 0\r\n\r\n"
    ).encode()


@pytest.fixture
def group():
    """A node socket (bound first, with the program) and a front socket on one port."""
    node = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    node.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    node.bind(("127.0.0.1", 0))
    assert steer_challenges(node) == SCAN, "this machine's optmem_max holds the whole program"
    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    front.bind(node.getsockname())
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    for s in (node, front):
        s.settimeout(2.0)
    socks = {NODE: node, FRONT: front}
    yield socks, client
    for s in (node, front, client):
        s.close()


def receiver(socks: dict, client, data: bytes) -> int:
    """Which socket of the group the kernel hands ``data`` to."""
    client.sendto(data, socks[NODE].getsockname())
    # The datagram is queued on exactly one socket before sendto returns
    # (loopback delivers synchronously): polling both without waiting is exact.
    got = []
    for index, s in socks.items():
        s.setblocking(False)
        try:
            if s.recv(65535) == data:
                got.append(index)
        except BlockingIOError:
            pass
        finally:
            s.settimeout(2.0)
    assert len(got) == 1, got
    return got[0]


# A datagram steered the wrong way is still answered (the node answers
# anything, the front passes on what it does not answer), so only what
# the program promises is tested: a name in another case, or
# Proxy-Authorization, may go either way.
@pytest.mark.parametrize(
    "data, expected",
    [
        (register(), FRONT),
        (register(AUTH), NODE),
        (register("Expires: 60\r\n" + AUTH + "Contact: <sip:a@127.0.0.1>\r\n"), NODE),
        (register(pad=SCAN), FRONT),  # beyond the scan: the front passes it on
        (register(AUTH, pad=1), NODE),  # every alignment of the header is found
        (register(AUTH, pad=2), NODE),
        (register(AUTH, pad=3), NODE),
        (register(AUTH).replace(b"REGISTER sip", b"OPTIONS sip", 1), NODE),
        (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\r\n\r\n", NODE),
        (b"REGISTERsip:example.test SIP/2.0\r\n\r\n", NODE),
        (b"REGISTER", NODE),
        (b"\r\n\r\n", NODE),
        (b"REGISTER ", FRONT),
    ],
)
def test_the_kernel_steers_each_datagram(group, data, expected):
    socks, client = group
    assert receiver(socks, client, data) == expected


def test_without_the_front_the_node_gets_everything(group):
    socks, client = group
    socks.pop(FRONT).close()
    for data in (register(), register(AUTH), b"OPTIONS sip:x SIP/2.0\r\n\r\n"):
        assert receiver(socks, client, data) == NODE


def test_the_program_fits_the_kernel_limit_and_jumps_forward_within_reach():
    prog = challenge_program()
    assert len(prog) <= 4096
    for pc, (code, jt, jf, k) in enumerate(prog):
        assert jt <= 255 and jf <= 255
        if code == 0x05:
            assert pc + 1 + k < len(prog)
        elif code & 0x07 == 0x05:
            assert pc + 1 + max(jt, jf) < len(prog)
    assert prog[-1] == (0x06, 0, 0, FRONT)
