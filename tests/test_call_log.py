"""Call log lines of a real node: SIPp calls answered, refused busy and cancelled each leave
one INFO line with the Call-ID, the caller, the callee and the source; none is a WARNING."""

import re

import pytest

from tests.test_proxy import call, phone, start_node

LINE = re.compile(
    r"INFO actors\.call_log: call (\S+) from sip:(\S+)@\S+ to sip:(\S+)@\S+ "
    r"\(source (udp|tcp):127\.0\.0\.1:\d+\): (.*)$"
)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = start_node(str(tmp_path_factory.mktemp("calllog")))
    yield n
    n.stop()


def call_lines(node, outcome: str) -> list[tuple]:
    with open(node.log_path, errors="replace") as f:
        found = [LINE.search(line) for line in f]
    return [m.groups() for m in found if m and m.group(5) == outcome]


def test_each_answered_call_leaves_one_line_at_its_bye(node):
    uas = phone(node, "user0", "uas_answer.xml")
    try:
        res = call(node, "user0", calls=20, rate=20)
    finally:
        uas.stop()
    assert (res.successful, res.failed) == (20, 0), res.stderr
    lines = call_lines(node, "ended (BYE)")
    assert len(lines) == 20
    assert len({call_id for call_id, *_ in lines}) == 20
    assert all(
        callee == "user0" and re.fullmatch(r"user\d+", caller) for _cid, caller, callee, *_ in lines
    )


def test_busy_and_cancelled_calls_say_so_with_their_status(node):
    uas = phone(node, "user1", "uas_busy.xml")
    try:
        call(node, "user1", calls=5, rate=10)
    finally:
        uas.stop()
    assert len(call_lines(node, "failed 486")) == 5
    uas = phone(node, "user2", "uas_ring_cancel.xml")
    try:
        res = call(node, "user2", "uac_cancel.xml", calls=5, rate=10)
    finally:
        uas.stop()
    assert res.successful == 5, res.stderr
    assert len(call_lines(node, "cancelled by the caller")) == 5
    with open(node.log_path, errors="replace") as f:
        assert not [line for line in f if "WARNING actors.call_log" in line]
