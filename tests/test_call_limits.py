"""Concurrent-call limits (sipcore.call_limits): the settings, the counts with a fake
clock (released on failure, CANCEL and BYE; bounded when a BYE is never seen), and the
proxy core refusing past them (486 for a user, 503 once every gateway is full) but never
an emergency call."""

import pytest

from sipcore.call_limits import CallCounts, Limits, parse_limits
from sipcore.dialing import Dialing
from sipcore.dialplan import DialPlanError, parse_dialplan
from sipcore.message import Response
from tests.test_dialing import GW_A, GW_B, PLAN, PSAP
from tests.test_dialing import core as dialing_core  # noqa: F401 (a fixture)
from tests.test_proxy_core import (
    ALICE,
    DOMAIN,
    PHONES,
    WALL,
    authed_invite,
    bind,
    credentials,
    our_route,
    out,
    reply,
    request,
)


def test_limits_are_parsed_and_checked():
    plan = parse_dialplan(
        {**PLAN, "limits": {"user": 2, "gateway": 5, "users": {"bob": 0}, "gateways": {"a": 1}}}
    )
    assert plan.limits.of_user("alice") == 2 and plan.limits.of_user("bob") == 0
    assert plan.limits.of_gateway("a") == 1 and plan.limits.of_gateway("b") == 5
    assert parse_dialplan(PLAN).limits == Limits()


@pytest.mark.parametrize(
    "limits, message",
    [
        ({"user": -1}, "0-100000"),
        ({"user": True}, "0-100000"),
        ({"user": "2"}, "0-100000"),
        ({"gateway": 10**9}, "0-100000"),
        ({"gateways": {"zz": 1}}, "no gateway named"),
        ({"users": {"": 1}}, "bad name"),
        ({"users": []}, "must be a table"),
        ({"users": {"bob": 1.5}}, "0-100000"),
        ({"each": 1}, "unknown setting"),
        ([], "table"),
    ],
)
def test_bad_limits_are_refused(limits, message):
    with pytest.raises(DialPlanError, match=message):
        parse_dialplan({**PLAN, "limits": limits})


def test_counts_release_and_bounds():
    limits = parse_limits({"user": 1, "gateway": 1})
    calls = CallCounts(max_calls=3, max_age=100.0)
    calls.add("c1", ("alice", "bob"), "a", 0.0)
    calls.add("c1", ("alice", "bob"), "a", 0.1)  # the same call again: counted once
    assert calls.users == {"alice": 1, "bob": 1} and calls.gateways == {"a": 1}
    with pytest.raises(Exception, match="Busy Here"):
        calls.check(("bob",), limits)
    assert calls.busy_gateways(limits) == {"a"}
    calls.end("c1")
    calls.end("c1")  # a BYE retransmitted
    calls.end("never-seen")
    assert calls.users == {} and calls.gateways == {} and len(calls) == 0
    calls.check(("bob",), limits)
    # A call whose BYE is never seen is forgotten after max_age ...
    calls.add("lost", ("alice",), None, 0.0)
    calls.add("c2", ("carol",), None, 50.0)
    calls.sweep(99.9)
    assert calls.users == {"alice": 1, "carol": 1}
    calls.add("c3", ("dave",), None, 100.0)
    assert "alice" not in calls.users and calls.stats["forgotten"] == 1
    # ... and at most max_calls are kept, the oldest forgotten first.
    calls.add("c4", ("erin",), None, 101.0)
    calls.add("c5", ("fred",), None, 102.0)
    assert len(calls) == 3 and "carol" not in calls.users
    assert calls.snapshot()["users"] == {"dave": 1, "erin": 1, "fred": 1}


@pytest.fixture
def limited(dialing_core):  # noqa: F811 (the fixture imported above)
    core = dialing_core
    plan = parse_dialplan(
        {
            **PLAN,
            "users": {**PLAN["users"], "bob": {"permissions": ["local"]}},
            "limits": {"user": 1, "gateways": {"a": 1, "b": 1}},
        }
    )
    core.dialing = Dialing(plan, core.dialing.is_user, DOMAIN)
    return core


def final(sent, dest=ALICE):
    return [m.status for m, d in sent if isinstance(m, Response) and d == dest and m.status >= 200]


def invites(sent):
    return [(m, d) for m, d in sent if getattr(m, "method", "") == "INVITE"]


def test_user_limit_gives_486_and_frees_up_after_bye(limited):
    core = limited
    bind(core.location, "bob", PHONES[0])
    core.receive(authed_invite_to(core, "sip:bob@example.test", "call-1"), ALICE, 0.2, WALL)
    ((inv, _),) = invites(out(core))
    core.receive(reply(inv, 200, "b"), PHONES[0], 0.5, WALL)
    assert final(out(core)) == [200]
    assert core.dialing.calls.users == {"alice": 1, "bob": 1}
    # alice's second call, and carol's call to bob, are past the limit
    core.receive(authed_invite_to(core, "sip:95551234@example.test", "call-2"), ALICE, 1.0, WALL)
    assert final(out(core)) == [486]
    core.receive(
        request(
            "INVITE",
            "sip:bob@example.test",
            frm="sip:x@else.test",
            call_id="call-3",
            branch="z9hG4bK3",
        ),
        ALICE,
        1.1,
        WALL,
    )
    assert final(out(core)) == [486]
    assert core.dialing.calls.stats["refused_user"] == 2
    core.receive(
        request(
            "BYE",
            "sip:bob@10.0.0.2:5062",
            frm="sip:alice@example.test",
            to_tag="b",
            call_id="call-1",
            cseq=3,
            branch="z9hG4bKbye",
            extra=(f"Route: {our_route(core, 'call-1')}",),
        ),
        ALICE,
        2.0,
        WALL,
    )
    out(core)
    assert core.dialing.calls.users == {}
    core.receive(authed_invite_to(core, "sip:95551234@example.test", "call-4"), ALICE, 3.0, WALL)
    assert [d for _, d in invites(out(core))] == [GW_A]


def test_failure_and_cancel_release(limited):
    core = limited
    bind(core.location, "bob", PHONES[0])
    core.receive(authed_invite_to(core, "sip:bob@example.test", "call-1"), ALICE, 0.2, WALL)
    ((inv, _),) = invites(out(core))
    core.receive(reply(inv, 486, "b"), PHONES[0], 0.5, WALL)
    assert final(out(core)) == [486] and core.dialing.calls.users == {}
    core.receive(authed_invite_to(core, "sip:bob@example.test", "call-2"), ALICE, 1.0, WALL)
    ((inv, _),) = invites(out(core))
    core.receive(reply(inv, 180, "b"), PHONES[0], 1.1, WALL)
    out(core)
    assert core.dialing.calls.users == {"alice": 1, "bob": 1}
    core.receive(
        request(
            "CANCEL",
            "sip:bob@example.test",
            frm="sip:alice@example.test",
            call_id="call-2",
            branch="z9hG4bK2call-2",
        ),
        ALICE,
        1.2,
        WALL,
    )
    out(core)
    assert core.dialing.calls.users == {}


def test_a_full_gateway_is_skipped_then_503(limited):
    core = limited
    plan = core.dialing.plan
    core.dialing = Dialing(
        parse_dialplan(
            {
                **PLAN,
                "users": {"alice": PLAN["users"]["alice"], "bob": {"permissions": ["local"]}},
                "limits": {"gateways": {"a": 1, "b": 1}},
            }
        ),
        core.dialing.is_user,
        DOMAIN,
    )
    assert plan.limits.user == 1
    core.receive(authed_invite_to(core, "sip:95551234@example.test", "call-1"), ALICE, 0.1, WALL)
    assert [d for _, d in invites(out(core))] == [GW_A]
    core.receive(
        authed_invite_to(core, "sip:95551235@example.test", "call-2", "bob"), ALICE, 0.2, WALL
    )
    assert [d for _, d in invites(out(core))] == [GW_B]  # a is full: b first
    core.receive(authed_invite_to(core, "sip:95551236@example.test", "call-3"), ALICE, 0.3, WALL)
    assert final(out(core)) == [503]
    assert core.dialing.calls.gateways == {"a": 1, "b": 1}
    assert core.dialing.calls.stats["refused_gateway"] == 1


def test_an_emergency_call_passes_a_full_limit(limited):
    core = limited
    bind(core.location, "bob", PHONES[0])
    core.receive(authed_invite_to(core, "sip:bob@example.test", "call-1"), ALICE, 0.2, WALL)
    out(core)
    # alice at her limit, authenticated: her emergency call goes through, and counts.
    core.receive(
        request(
            "INVITE",
            "sip:95559999@example.test",
            frm="sip:alice@example.test",
            call_id="call-2",
            branch="z9hG4bK2",
        ),
        ALICE,
        0.3,
        WALL,
    )
    (challenge,) = [m for m, _ in out(core)]
    auth = credentials(challenge, "alice", "INVITE", "sip:911@example.test")
    core.receive(
        request(
            "INVITE",
            "sip:911@example.test",
            frm="sip:alice@example.test",
            call_id="call-3",
            branch="z9hG4bK3",
            extra=(f"Proxy-Authorization: {auth}",),
        ),
        ALICE,
        0.4,
        WALL,
    )
    assert [d for _, d in invites(out(core))] == [PSAP]
    assert core.dialing.calls.users["alice"] == 2
    core.receive(
        request(
            "INVITE",
            "sip:911@example.test",
            frm="sip:alice@example.test",
            call_id="call-4",
            branch="z9hG4bK4",
        ),
        ALICE,
        0.5,
        WALL,
    )
    assert [d for _, d in invites(out(core))] == [PSAP]  # no credentials at all


def authed_invite_to(core, uri, call_id, user="alice"):
    """The authenticated INVITE (after its 407) that ``user`` sends to ``uri``."""
    return authed_invite(core, uri, call_id=call_id, user=user)
