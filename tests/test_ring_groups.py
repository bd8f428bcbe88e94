"""Ring groups (sipcore.ring_groups): parsed and checked (loops, caps), planned, and rung by
the proxy core with a fake clock: all at once or in turn with a ring timeout, then the
fallback (a URI, a user or a number dialled out)."""

import pytest

from sipcore.dialing import Dialing
from sipcore.dialplan import DialPlanError, parse_dialplan
from sipcore.message import Response
from sipcore.proxy import BranchTarget
from sipcore.ring_groups import MAX_GROUPS, MAX_MEMBERS, RingGroup, ring_plan
from tests.test_dialing import GW_A, PLAN
from tests.test_dialing import core as dialing_core  # noqa: F401 (a fixture)
from tests.test_proxy_core import ALICE, DOMAIN, PHONES, WALL, bind, out, reply, request, run_until

VOICEMAIL = ("udp", "10.0.0.9", 5070)


def plan_with(**group):
    body = {
        "name": "sales",
        "numbers": ["300", "+15551230300"],
        "members": ["bob", "carol"],
        **group,
    }
    return {**PLAN, "groups": [body]}


@pytest.fixture
def ringing(dialing_core):  # noqa: F811 (the fixture imported above)
    core = dialing_core

    def use(**group):
        core.dialing = Dialing(parse_dialplan(plan_with(**group)), core.dialing.is_user, DOMAIN)
        bind(core.location, "bob", PHONES[0])
        bind(core.location, "carol", PHONES[1])
        return core

    return use


def call(core, number="300", now=0.0, call_id="call-1"):
    """A call from a stranger's domain to ``number`` (no challenge): what the core sent."""
    core.receive(
        request(
            "INVITE",
            f"sip:{number}@{DOMAIN}",
            frm="sip:someone@else.test",
            to=f"sip:{number}@{DOMAIN}",
            call_id=call_id,
            branch=f"z9hG4bK{call_id}",
        ),
        ALICE,
        now,
        WALL,
    )
    return out(core)


def invites(sent):
    return {d: m for m, d in sent if getattr(m, "method", "") == "INVITE"}


def statuses(sent, dest=ALICE):
    return [m.status for m, d in sent if isinstance(m, Response) and d == dest]


# -- the document -------------------------------------------------------------------
def test_groups_are_parsed_with_nested_groups_expanded():
    plan = parse_dialplan(
        {
            "groups": [
                {"name": "all", "numbers": ["400"], "members": ["dave", "sales", "bob"]},
                {
                    "name": "sales",
                    "numbers": ["300"],
                    "members": ["bob", "carol"],
                    "strategy": "sequential",
                    "ring_timeout": 5,
                    "fallback": "sip:vm@10.0.0.9",
                },
            ]
        }
    )
    assert plan.ring_groups.get("400").members == ("dave", "bob", "carol")
    sales = plan.ring_groups.get("300")
    assert sales.strategy == "sequential" and sales.ring_timeout == 5.0
    assert plan.ring_groups.get("301") is None


@pytest.mark.parametrize(
    "groups, message",
    [
        ([{"name": "a", "numbers": ["300"], "members": ["a"]}], "contains itself"),
        (
            [
                {"name": "a", "numbers": ["300"], "members": ["b"]},
                {"name": "b", "numbers": ["301"], "members": ["c"]},
                {"name": "c", "numbers": ["302"], "members": ["x", "a"]},
            ],
            r"a > b > c > a",
        ),
        (
            [
                {"name": "a", "numbers": ["300"], "members": ["bob"], "fallback": "301"},
                {"name": "b", "numbers": ["301"], "members": ["bob"]},
            ],
            "loop",
        ),
        ([{"name": "a", "numbers": ["300"], "members": ["bob"], "fallback": "a"}], "loop"),
        ([{"name": "a", "numbers": ["201"], "members": ["bob"]}], "already alice's"),
        (
            [
                {"name": "a", "numbers": ["300"], "members": ["bob"]},
                {"name": "b", "numbers": ["300"], "members": ["bob"]},
            ],
            "already group a's",
        ),
        (
            [
                {"name": "a", "numbers": ["300"], "members": ["bob"]},
                {"name": "a", "numbers": ["301"], "members": ["bob"]},
            ],
            "second group",
        ),
        ([{"name": "a", "numbers": ["300"], "members": []}], "members must be"),
        (
            [
                {
                    "name": "a",
                    "numbers": ["300"],
                    "members": [f"u{k}" for k in range(MAX_MEMBERS + 1)],
                }
            ],
            "members must be",
        ),
        (
            [
                {"name": "a", "numbers": ["300"], "members": ["b", "c"]},
                {"name": "b", "numbers": ["301"], "members": [f"u{k}" for k in range(20)]},
                {"name": "c", "numbers": ["302"], "members": [f"v{k}" for k in range(20)]},
            ],
            "more than 32 users",
        ),
        ([{"name": "a", "numbers": [], "members": ["bob"]}], "numbers must be"),
        ([{"name": "a", "numbers": ["3o0"], "members": ["bob"]}], "numbers must be"),
        ([{"name": "a", "numbers": ["300"], "members": ["bob"], "strategy": "random"}], "strategy"),
        (
            [{"name": "a", "numbers": ["300"], "members": ["bob"], "ring_timeout": 0}],
            "ring_timeout",
        ),
        (
            [{"name": "a", "numbers": ["300"], "members": ["bob"], "ring_timeout": 1e9}],
            "ring_timeout",
        ),
        (
            [{"name": "a", "numbers": ["300"], "members": ["bob"], "fallback": "tel:+1555"}],
            "sip: or sips:",
        ),
        ([{"name": "a", "numbers": ["300"], "members": ["bob"], "fallback": "sip:"}], "not a SIP"),
        ([{"name": "a", "numbers": ["300"], "members": ["bob"], "colour": "red"}], "unknown"),
        ([{"name": "a b", "numbers": ["300"], "members": ["bob"]}], "name must be"),
        ("sales", "must be a list"),
    ],
)
def test_bad_groups_are_refused(groups, message):
    with pytest.raises(DialPlanError, match=message):
        parse_dialplan({"users": {"alice": {"numbers": ["201"]}}, "groups": groups})


def test_a_huge_nesting_is_refused_quickly():
    # 32 groups each naming the next one 32 times: 32^32 paths if expanded naively.
    groups = [
        {
            "name": f"g{k}",
            "numbers": [str(1000 + k)],
            "members": [f"g{k + 1}"] * 32 if k < 31 else ["bob"],
        }
        for k in range(32)
    ]
    plan = parse_dialplan({"groups": groups})
    assert plan.ring_groups.get("1000").members == ("bob",)
    groups[-1]["members"] = [f"u{k}" for k in range(32)]
    groups[-2]["members"] = ["g31", "x"]
    with pytest.raises(DialPlanError, match="more than"):
        parse_dialplan({"groups": groups})
    with pytest.raises(DialPlanError, match=f"at most {MAX_GROUPS}"):
        parse_dialplan(
            {
                "groups": [
                    {"name": f"g{k}", "numbers": [str(k)], "members": ["b"]}
                    for k in range(MAX_GROUPS + 1)
                ]
            }
        )


def test_ring_plan_simultaneous_and_sequential():
    phones = {
        "bob": [BranchTarget("sip:bob@a"), BranchTarget("sip:bob@b")],
        "carol": [BranchTarget("sip:carol@c")],
        "dave": [],
    }
    fallback = [[BranchTarget("sip:vm@v")]]
    both = RingGroup("g", ("300",), "simultaneous", ("bob", "dave", "carol"), 15.0, "vm")
    groups, timeouts = ring_plan(both, phones.__getitem__, fallback, 16)
    assert [[t.uri for t in g] for g in groups] == [
        ["sip:bob@a", "sip:bob@b", "sip:carol@c"],
        ["sip:vm@v"],
    ]
    assert timeouts == [15.0, None]
    groups, _ = ring_plan(both, phones.__getitem__, [], 2)
    assert [[t.uri for t in g] for g in groups] == [["sip:bob@a", "sip:bob@b"]]
    turn = RingGroup("g", ("300",), "sequential", ("dave", "carol", "bob"), 10.0, "")
    groups, timeouts = ring_plan(turn, phones.__getitem__, [], 16)
    assert [[t.uri for t in g] for g in groups] == [["sip:carol@c"], ["sip:bob@a", "sip:bob@b"]]
    assert timeouts == [10.0, 10.0]


# -- in the proxy core ----------------------------------------------------------------
def test_simultaneous_group_rings_both_and_the_second_answers(ringing):
    core = ringing()
    sent = call(core)
    branches = invites(sent)
    assert set(branches) == {PHONES[0], PHONES[1]}
    assert branches[PHONES[0]].uri.startswith("sip:bob@")
    core.receive(reply(branches[PHONES[0]], 180, "b"), PHONES[0], 0.5, WALL)
    core.receive(reply(branches[PHONES[1]], 200, "c"), PHONES[1], 1.0, WALL)
    msgs = out(core)
    assert 200 in statuses(msgs)
    assert [m.method for m, d in msgs if d == PHONES[0]] == ["CANCEL"]


def test_simultaneous_group_times_out_to_the_fallback_uri(ringing):
    core = ringing(ring_timeout=15, fallback=f"sip:vm@{VOICEMAIL[1]}:{VOICEMAIL[2]}")
    branches = invites(call(core))
    for phone in PHONES[:2]:
        core.receive(reply(branches[phone], 180, phone[1]), phone, 0.5, WALL)
    out(core)
    assert not invites(run_until(core, 14.9))
    sent = run_until(core, 15.0)
    assert sorted(m.method for m, d in sent if d in PHONES[:2]) == ["CANCEL", "CANCEL"]
    ((vm, dest),) = [(m, d) for m, d in sent if getattr(m, "method", "") == "INVITE"]
    assert dest == VOICEMAIL and vm.uri == f"sip:vm@{VOICEMAIL[1]}:{VOICEMAIL[2]}"
    for phone in PHONES[:2]:  # the members' 487s are not the call's answer
        core.receive(reply(branches[phone], 487, phone[1]), phone, 15.1, WALL)
    assert statuses(out(core)) == []
    core.receive(reply(vm, 200, "vm"), VOICEMAIL, 16.0, WALL)
    assert statuses(out(core)) == [200]


def test_sequential_group_rings_each_in_turn_then_the_fallback_user(ringing):
    bob_first = ringing(strategy="sequential", ring_timeout=10, fallback="alice")
    bind(bob_first.location, "alice", PHONES[2])
    core = bob_first
    bob = invites(call(core))
    assert list(bob) == [PHONES[0]]
    core.receive(reply(bob[PHONES[0]], 180, "b"), PHONES[0], 0.5, WALL)
    out(core)
    sent = run_until(core, 10.0)
    assert [m.method for m, d in sent if d == PHONES[0]] == ["CANCEL"]
    assert list(invites(sent)) == [PHONES[1]]  # carol, at once
    carol = invites(sent)[PHONES[1]]
    core.receive(reply(carol, 180, "c"), PHONES[1], 10.5, WALL)
    out(core)
    sent = run_until(core, 20.0)
    alice = invites(sent)[PHONES[2]]  # the fallback: alice's phone, with no timeout
    core.receive(reply(alice, 180, "a"), PHONES[2], 20.5, WALL)
    out(core)
    assert not [m for m, d in run_until(core, 60.0) if d == PHONES[2]]


def test_a_busy_member_passes_to_the_next_at_once(ringing):
    core = ringing(strategy="sequential", ring_timeout=10)
    bob = invites(call(core))[PHONES[0]]
    core.receive(reply(bob, 486, "b"), PHONES[0], 1.0, WALL)
    carol = invites(out(core))[PHONES[1]]
    core.receive(reply(carol, 180, "c"), PHONES[1], 1.1, WALL)
    out(core)
    # The first member's timer (due at 10 s) does not cut the second one short.
    assert not [m for m, d in run_until(core, 10.5) if d == PHONES[1]]
    assert [m.method for m, d in run_until(core, 11.0) if d == PHONES[1]] == ["CANCEL"]


def test_nobody_answers_and_no_fallback_gives_480(ringing):
    core = ringing(ring_timeout=5)
    branches = invites(call(core))
    for phone in PHONES[:2]:
        core.receive(reply(branches[phone], 180, phone[1]), phone, 0.5, WALL)
    out(core)
    run_until(core, 5.0)
    for phone in PHONES[:2]:
        core.receive(reply(branches[phone], 487, phone[1]), phone, 5.1, WALL)
    assert statuses(out(core)) == [480]


def test_fallback_number_is_dialled_out_without_permission(ringing):
    core = ringing(ring_timeout=5, fallback="95550000")
    branches = invites(call(core))
    for phone in PHONES[:2]:
        core.receive(reply(branches[phone], 180, phone[1]), phone, 0.5, WALL)
    out(core)
    ((gw, dest),) = [
        (m, d) for m, d in run_until(core, 5.0) if getattr(m, "method", "") == "INVITE"
    ]
    assert dest == GW_A and gw.uri == "sip:5550000@127.0.0.21:5080"


def test_nobody_registered_goes_straight_to_the_fallback_or_480(dialing_core):  # noqa: F811
    core = dialing_core
    core.dialing = Dialing(
        parse_dialplan(plan_with(fallback="sip:vm@10.0.0.9:5070")), core.dialing.is_user, DOMAIN
    )
    assert list(invites(call(core, "+15551230300"))) == [VOICEMAIL]
    core.dialing = Dialing(parse_dialplan(plan_with()), core.dialing.is_user, DOMAIN)
    assert statuses(call(core, "300", call_id="call-2")) == [480]


def test_cancel_by_the_caller_stops_the_timers(ringing):
    core = ringing(strategy="sequential", ring_timeout=10, fallback="sip:vm@10.0.0.9:5070")
    bob = invites(call(core))[PHONES[0]]
    core.receive(reply(bob, 180, "b"), PHONES[0], 0.5, WALL)
    out(core)
    core.receive(
        request(
            "CANCEL",
            f"sip:300@{DOMAIN}",
            frm="sip:someone@else.test",
            to=f"sip:300@{DOMAIN}",
            branch="z9hG4bKcall-1",
        ),
        ALICE,
        1.0,
        WALL,
    )
    sent = out(core)
    assert [m.method for m, d in sent if d == PHONES[0]] == ["CANCEL"]
    core.receive(reply(bob, 487, "b"), PHONES[0], 1.1, WALL)
    assert statuses(out(core)) == [487]
    assert not invites(run_until(core, 40.0))


def test_a_member_at_their_call_limit_is_not_rung(dialing_core):  # noqa: F811
    core = dialing_core
    core.dialing = Dialing(
        parse_dialplan({**plan_with(), "limits": {"users": {"bob": 1}}}),
        core.dialing.is_user,
        DOMAIN,
    )
    bind(core.location, "bob", PHONES[0])
    bind(core.location, "carol", PHONES[1])
    core.dialing.calls.add("elsewhere", ("bob",), None, 0.0)
    assert list(invites(call(core))) == [PHONES[1]]
    core.dialing.calls.end("elsewhere")
    assert set(invites(call(core, call_id="call-2"))) == {PHONES[0], PHONES[1]}


def test_a_fallback_uri_back_to_the_group_ends_as_a_loop(dialing_core):  # noqa: F811
    """A fallback naming the group's own number at the proxy's address comes back to it:
    a spiral once (its Request-URI changed), then the loop check answers 482."""
    core = dialing_core
    core.dialing = Dialing(
        parse_dialplan(plan_with(fallback="sip:300@127.0.0.1:5060")), core.dialing.is_user, DOMAIN
    )
    here = ("udp", "127.0.0.1", 5060)
    sent = call(core)
    for _ in range(2):
        (again,) = [m for m, d in sent if getattr(m, "method", "") == "INVITE" and d == here]
        core.receive(again, here, 0.1, WALL)
        sent = out(core)
    assert statuses(sent, here) == [482]
