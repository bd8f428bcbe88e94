"""RFC 3261 §10.3 registrar rules (with RFC 3327 Path and RFC 5626 instance/reg-id), fake clock."""

from email.utils import parsedate_to_datetime

import pytest

from sipcore.cluster_addresses import ClusterAddresses
from sipcore.errors import SipError
from sipcore.location import Binding, Location, is_newer
from sipcore.message import parse_message
from sipcore.registrar import RegistrarRules
from sipcore.uri import parse_name_addr

T0 = 1_700_000_000.25
AOR = "sip:alice@example.test"
PC = "sip:alice@192.0.2.10:5060"
INSTANCE = "<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"


def reg(
    *contacts,
    to="sip:alice@example.test",
    ruri="sip:example.test",
    call_id="c1@pc",
    cseq=1,
    expires=None,
    extra=(),
):
    """A REGISTER as bytes on the wire, parsed."""
    lines = [
        f"REGISTER {ruri} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-1",
        "Max-Forwards: 70",
        f"From: <{to}>;tag=f1",
        f"To: <{to}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
    ]
    lines += [f"Contact: {c}" for c in contacts]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    lines += extra
    lines.append("Content-Length: 0")
    return parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())


@pytest.fixture
def rules():
    return RegistrarRules(
        "example.test",
        aliases=("alias.test", "192.0.2.1"),
        min_expires=60,
        max_expires=3600,
        default_expires=1800,
        max_contacts=3,
    )


@pytest.fixture
def loc():
    return Location()


def register(rules, loc, req, now=T0, node="n1"):
    """What the actor does after authentication: apply, then put every change."""
    rules.check(req)
    out = rules.apply(req, loc, now, node, "udp:192.0.2.10:5060", "totag")
    assert out.encode() == out.response.encode(), "the 200's bytes are those of its Response"
    for b in out.changes:
        assert is_newer(b, loc.get(b.aor).get(b.key)), "peers would refuse this version"
        loc.put(b)
    return out


def listed(resp) -> dict[str, dict]:
    """Contact URI -> parameters of each Contact in a 200."""
    out = {}
    for v in resp.get_all("contact"):
        na = parse_name_addr(v)
        out[str(na.uri)] = na.params
    return out


def expires_of(resp) -> dict[str, int]:
    return {uri: int(p["expires"]) for uri, p in listed(resp).items()}


def fails(status, rules, loc, req, now=T0):
    """The REGISTER fails with ``status`` and the location is left as it was."""
    before = {aor: dict(per) for aor, per in loc.table.items()}
    with pytest.raises(SipError) as ei:
        register(rules, loc, req, now)
    assert ei.value.status == status
    assert loc.table == before
    return ei.value


# -- steps 1-2: domain and Require --------------------------------------------


@pytest.mark.parametrize(
    "ruri",
    [
        "sip:example.test",
        "sip:EXAMPLE.test:5060",
        "sips:example.test",
        "sip:alias.test",
        "sip:192.0.2.1",
    ],
)
def test_check_accepts_our_domain_and_aliases(rules, ruri):
    rules.check(reg(ruri=ruri))


@pytest.mark.parametrize("ruri", ["sip:other.test", "sip:example.test.evil", "tel:+15551234"])
def test_check_refuses_a_foreign_domain(rules, ruri):
    with pytest.raises(SipError) as ei:
        rules.check(reg(ruri=ruri))
    assert ei.value.status in (403, 404)


def test_require_unknown_option_gets_420_with_unsupported(rules):
    req = reg(PC, extra=["Require: path, foo", "Require: Bar"])
    with pytest.raises(SipError) as ei:
        rules.check(req)
    assert ei.value.status == 420
    assert dict(ei.value.headers)["Unsupported"] == "foo, Bar"


def test_require_supported_options_pass(rules):
    rules.check(reg(PC, extra=["Require: Path, outbound"]))


# -- step 5: address of record --------------------------------------------------


@pytest.mark.parametrize(
    "to, aor, user",
    [
        ("sip:alice@example.test", AOR, "alice"),
        ("sip:alice@EXAMPLE.TEST", AOR, "alice"),
        ("sip:alice@alias.test", AOR, "alice"),
        ("sips:alice@example.test", AOR, "alice"),
        ("sip:%61lice@example.test", AOR, "alice"),
        ("sip:alice@example.test;user=phone", AOR, "alice"),
        ("sip:Alice@example.test", "sip:Alice@example.test", "Alice"),
    ],
)
def test_aor_of(rules, to, aor, user):
    assert rules.aor_of(reg(to=to)) == (aor, user)


@pytest.mark.parametrize("to", ["sip:alice@other.test", "sip:example.test", "tel:+15551234"])
def test_aor_of_a_foreign_or_userless_to_is_404(rules, to):
    with pytest.raises(SipError) as ei:
        rules.aor_of(reg(to=to))
    assert ei.value.status == 404


def test_escaped_user_and_alias_reach_the_same_bindings(rules, loc):
    register(rules, loc, reg(f"<{PC}>", to="sip:%61lice@alias.test"))
    out = register(rules, loc, reg(to="sip:alice@example.test", cseq=2), T0 + 10)
    assert list(listed(out.response)) == [PC]
    assert [b.aor for b in loc.all()] == [AOR]


# -- steps 6-8: adding, refreshing, removing ------------------------------------


def test_add_binding_and_200(rules, loc):
    req = reg(f"<{PC}>", expires=600, extra=["User-Agent: phone/1.0"])
    out = register(rules, loc, req)
    [b] = out.changes
    assert (b.aor, b.key, b.contact) == (AOR, PC, PC)
    assert b.expires_at == T0 + 600
    assert (b.call_id, b.cseq, b.origin, b.updated_at) == ("c1@pc", 1, "n1", T0)
    assert (b.received, b.user_agent, b.deleted) == ("udp:192.0.2.10:5060", "phone/1.0", False)
    resp = out.response
    assert resp.status == 200
    assert expires_of(resp) == {PC: 600}
    assert parse_name_addr(resp.get("to")).tag == "totag"
    assert resp.call_id == "c1@pc" and resp.cseq == (1, "REGISTER")
    assert parsedate_to_datetime(resp.get("date")).timestamp() == int(T0)
    assert [x.contact for x in loc.lookup(AOR, T0)] == [PC]


def test_contact_expires_param_wins_over_expires_header(rules, loc):
    out = register(rules, loc, reg(f"<{PC}>;expires=120", "<sip:alice@192.0.2.11>", expires=300))
    assert expires_of(out.response) == {PC: 120, "sip:alice@192.0.2.11": 300}


def test_default_expiry_when_neither(rules, loc):
    out = register(rules, loc, reg(f"<{PC}>"))
    assert out.changes[0].expires_at == T0 + 1800
    assert expires_of(out.response) == {PC: 1800}


def test_maximum_expiry_clamp(rules, loc):
    out = register(
        rules, loc, reg(f"<{PC}>;expires=86400", "<sip:alice@192.0.2.11>", expires=4294967295)
    )
    assert expires_of(out.response) == {PC: 3600, "sip:alice@192.0.2.11": 3600}
    assert {b.expires_at for b in out.changes} == {T0 + 3600}


@pytest.mark.parametrize(
    "contact, expires", [(f"<{PC}>;expires=59", None), (f"<{PC}>", 1), (f"<{PC}>;expires=30", 3600)]
)
def test_interval_too_brief_is_423_with_min_expires(rules, loc, contact, expires):
    err = fails(423, rules, loc, reg(contact, expires=expires))
    assert dict(err.headers)["Min-Expires"] == "60"


def test_min_expires_itself_is_accepted(rules, loc):
    out = register(rules, loc, reg(f"<{PC}>", expires=60))
    assert expires_of(out.response) == {PC: 60}


@pytest.mark.parametrize(
    "contact, expires",
    [(f"<{PC}>;expires=soon", None), (f"<{PC}>", "x"), (f"<{PC}>;expires=-5", None)],
)
def test_malformed_expiry_is_400(rules, loc, contact, expires):
    fails(400, rules, loc, reg(contact, expires=expires))


def test_refresh_updates_one_binding(rules, loc):
    register(rules, loc, reg(f"<{PC}>", expires=600))
    out = register(rules, loc, reg(f"<{PC}>", expires=900, cseq=2), T0 + 300)
    [b] = out.changes
    assert b.expires_at == T0 + 300 + 900 and b.cseq == 2
    assert expires_of(out.response) == {PC: 900}
    assert len(loc) == 1 and loc.lookup(AOR, T0 + 1000)[0].cseq == 2


def test_refresh_matches_contacts_by_uri_comparison(rules, loc):
    register(rules, loc, reg("<sip:alice@PC.Example.test:5060>"))
    out = register(rules, loc, reg("<sip:alice@pc.example.test:5060>", cseq=2), T0 + 1)
    assert len(listed(out.response)) == 1 and len(loc) == 1
    out = register(
        rules, loc, reg("<sip:alice@pc.example.test:5060;transport=tcp>", cseq=3), T0 + 2
    )
    assert len(listed(out.response)) == 2


def test_remove_with_expires_zero_leaves_a_tombstone(rules, loc):
    register(rules, loc, reg(f"<{PC}>", "<sip:alice@192.0.2.11>", expires=600))
    out = register(rules, loc, reg(f"<{PC}>;expires=0", cseq=2), T0 + 10)
    [t] = out.changes
    assert t.deleted and t.key == PC and t.expires_at == T0 + 600
    assert (t.call_id, t.cseq, t.updated_at) == ("c1@pc", 2, T0 + 10)
    assert expires_of(out.response) == {"sip:alice@192.0.2.11": 590}
    assert [b.contact for b in loc.lookup(AOR, T0 + 10)] == ["sip:alice@192.0.2.11"]
    assert loc.get(AOR)[PC].deleted


def test_remove_with_expires_header_zero(rules, loc):
    register(rules, loc, reg(f"<{PC}>"))
    out = register(rules, loc, reg(f"<{PC}>", expires=0, cseq=2), T0 + 1)
    assert [b.deleted for b in out.changes] == [True]
    assert listed(out.response) == {}


def test_remove_of_unknown_or_removed_binding_changes_nothing(rules, loc):
    out = register(rules, loc, reg(f"<{PC}>;expires=0"))
    assert out.changes == [] and out.response.status == 200
    register(rules, loc, reg(f"<{PC}>", cseq=2))
    register(rules, loc, reg(f"<{PC}>;expires=0", cseq=3))
    out = register(rules, loc, reg(f"<{PC}>;expires=0", cseq=4))
    assert out.changes == []


def test_expired_binding_is_not_removed_again(rules, loc):
    register(rules, loc, reg(f"<{PC}>", expires=60))
    out = register(rules, loc, reg(f"<{PC}>;expires=0", cseq=2), T0 + 61)
    assert out.changes == []


def test_several_contacts_are_applied_together(rules, loc):
    out = register(
        rules,
        loc,
        reg(f"<{PC}>;q=0.5, <sip:alice@192.0.2.11>;q=1", "<sip:alice@192.0.2.12>", expires=600),
    )
    assert len(out.changes) == 3
    assert set(listed(out.response)) == {PC, "sip:alice@192.0.2.11", "sip:alice@192.0.2.12"}
    assert next(b.contact for b in loc.lookup(AOR, T0)) in (
        "sip:alice@192.0.2.11",
        "sip:alice@192.0.2.12",
    )


def test_same_contact_twice_in_one_request_makes_one_change(rules, loc):
    out = register(rules, loc, reg(f"<{PC}>;expires=100", f"<{PC}>;expires=200"))
    assert len(out.changes) == 1 and expires_of(out.response) == {PC: 200}
    out = register(
        rules, loc, reg("<sip:alice@192.0.2.11>", "<sip:alice@192.0.2.11>;expires=0", cseq=2)
    )
    assert out.changes == [] and expires_of(out.response) == {PC: 200}


@pytest.mark.parametrize(
    "bad", [f"<{PC}>;q=2", f"<{PC}>;expires=10", f"<{PC}>;q=x", f"<{PC}>;expires=zz"]
)
def test_one_bad_contact_fails_the_whole_request(rules, loc, bad):
    register(rules, loc, reg("<sip:alice@192.0.2.13>"))
    status = 423 if "expires=10" in bad else 400
    fails(
        status,
        rules,
        loc,
        reg("<sip:alice@192.0.2.11>", "<sip:alice@192.0.2.13>;expires=0", bad, cseq=2),
        T0 + 1,
    )


def test_one_out_of_order_contact_fails_the_whole_request(rules, loc):
    register(rules, loc, reg(f"<{PC}>", cseq=5))
    fails(500, rules, loc, reg("<sip:alice@192.0.2.11>", f"<{PC}>", cseq=5), T0 + 1)


# -- Call-ID / CSeq ordering --------------------------------------------------------


@pytest.mark.parametrize("cseq", [5, 4, 1])
def test_same_call_id_with_cseq_not_higher_fails(rules, loc, cseq):
    register(rules, loc, reg(f"<{PC}>", cseq=5))
    err = fails(500, rules, loc, reg(f"<{PC}>", expires=900, cseq=cseq), T0 + 1)
    assert err.status == 500
    fails(500, rules, loc, reg(f"<{PC}>;expires=0", cseq=cseq), T0 + 1)


def test_different_call_id_is_accepted_whatever_its_cseq(rules, loc):
    register(rules, loc, reg(f"<{PC}>", cseq=50))
    out = register(rules, loc, reg(f"<{PC}>", expires=900, call_id="c2@pc", cseq=1), T0 + 1)
    assert out.changes[0].call_id == "c2@pc"
    out = register(rules, loc, reg(f"<{PC}>;expires=0", call_id="c3@pc", cseq=1), T0 + 2)
    assert out.changes[0].deleted


def test_stale_request_cannot_revive_a_removed_binding(rules, loc):
    register(rules, loc, reg(f"<{PC}>", cseq=1))
    register(rules, loc, reg(f"<{PC}>;expires=0", cseq=2), T0 + 1)
    fails(500, rules, loc, reg(f"<{PC}>", cseq=2), T0 + 2)
    out = register(rules, loc, reg(f"<{PC}>", cseq=3), T0 + 3)
    assert not out.changes[0].deleted


def test_new_version_outranks_a_stored_one_stamped_by_a_clock_ahead(rules, loc):
    ahead = Binding(AOR, PC, PC, T0 + 3600, "c0@pc", 9, origin="n2", updated_at=T0 + 5)
    loc.put(ahead)
    out = register(rules, loc, reg(f"<{PC}>", call_id="c1@pc", cseq=1))
    assert out.changes[0].updated_at > ahead.updated_at
    out = register(rules, loc, reg("*", call_id="c2@pc", expires=0), T0 + 1)
    assert out.changes[0].deleted and loc.merge(out.changes[0]) is False


# -- Contact: * -------------------------------------------------------------------------


def test_wildcard_with_expires_zero_removes_every_binding(rules, loc):
    register(rules, loc, reg(f"<{PC}>", "<sip:alice@192.0.2.11>", expires=600))
    register(rules, loc, reg("<sip:alice@192.0.2.12>", call_id="other", expires=60))
    out = register(rules, loc, reg("*", expires=0, cseq=2), T0 + 70)
    assert sorted(b.key for b in out.changes) == [PC, "sip:alice@192.0.2.11"]
    assert all(b.deleted and b.cseq == 2 and b.expires_at == T0 + 600 for b in out.changes)
    assert listed(out.response) == {}
    assert loc.lookup(AOR, T0 + 70) == []


@pytest.mark.parametrize(
    "contacts, expires", [(("*",), 60), (("*",), None), (("*", f"<{PC}>"), 0), ((f"*, <{PC}>",), 0)]
)
def test_wildcard_misuse_is_400(rules, loc, contacts, expires):
    register(rules, loc, reg(f"<{PC}>"))
    fails(400, rules, loc, reg(*contacts, expires=expires, cseq=2), T0 + 1)


def test_wildcard_with_old_cseq_fails(rules, loc):
    register(rules, loc, reg(f"<{PC}>", cseq=3))
    fails(500, rules, loc, reg("*", expires=0, cseq=3), T0 + 1)


# -- the 200 -------------------------------------------------------------------------------


def test_register_without_contact_lists_bindings(rules, loc):
    register(rules, loc, reg(f"<{PC}>;q=0.7", expires=600))
    register(rules, loc, reg("<sip:alice@192.0.2.11>", call_id="c2", expires=300), T0 + 50)
    out = register(rules, loc, reg(call_id="query"), T0 + 100)
    assert out.changes == []
    assert expires_of(out.response) == {PC: 500, "sip:alice@192.0.2.11": 250}
    assert listed(out.response)[PC]["q"] == "0.7"
    assert out.response.get("date")


def test_expired_bindings_are_not_listed(rules, loc):
    register(rules, loc, reg(f"<{PC}>", expires=60))
    register(rules, loc, reg("<sip:alice@192.0.2.11>", call_id="c2", expires=600))
    assert set(listed(register(rules, loc, reg(), T0 + 59.5).response)) == {
        PC,
        "sip:alice@192.0.2.11",
    }
    assert set(listed(register(rules, loc, reg(), T0 + 60).response)) == {"sip:alice@192.0.2.11"}


def test_a_live_binding_is_never_listed_with_expires_zero(rules, loc):
    register(rules, loc, reg(f"<{PC}>", expires=60))
    assert expires_of(register(rules, loc, reg(), T0 + 59.9).response) == {PC: 1}


def test_q_values_are_kept_and_listed(rules, loc):
    out = register(
        rules,
        loc,
        reg(f"<{PC}>;q=0", "<sip:alice@192.0.2.11>;q=1.0", "<sip:alice@192.0.2.12>;q=0.125"),
    )
    assert {b.contact: b.q for b in out.changes} == {
        PC: 0.0,
        "sip:alice@192.0.2.11": 1.0,
        "sip:alice@192.0.2.12": 0.125,
    }
    assert {u: p.get("q") for u, p in listed(out.response).items()} == {
        PC: "0",
        "sip:alice@192.0.2.11": "1",
        "sip:alice@192.0.2.12": "0.125",
    }


@pytest.mark.parametrize("q", ["1.5", "-0.1", "nan", "inf", "high"])
def test_q_out_of_range_or_malformed_is_400(rules, loc, q):
    fails(400, rules, loc, reg(f"<{PC}>;q={q}"))


# -- Path (RFC 3327) ------------------------------------------------------------------


def test_path_is_kept_with_the_binding_and_echoed_when_supported(rules, loc):
    paths = ["<sip:edge1.example.test;lr>", "<sip:edge2.example.test;lr>, <sip:e3.test;lr>"]
    req = reg(f"<{PC}>", extra=[f"Path: {p}" for p in paths] + ["Supported: path"])
    out = register(rules, loc, req)
    assert out.changes[0].path == [
        "<sip:edge1.example.test;lr>",
        "<sip:edge2.example.test;lr>",
        "<sip:e3.test;lr>",
    ]
    assert loc.lookup(AOR, T0)[0].path == out.changes[0].path
    assert out.response.raw_values("path") == paths


@pytest.mark.parametrize("extra, echoed", [([], False), (["Require: path"], True)])
def test_path_echo_needs_path_support(rules, loc, extra, echoed):
    out = register(rules, loc, reg(f"<{PC}>", extra=["Path: <sip:edge1.example.test;lr>"] + extra))
    assert out.changes[0].path == ["<sip:edge1.example.test;lr>"]
    assert bool(out.response.raw_values("path")) is echoed


# -- +sip.instance / reg-id (RFC 5626) -------------------------------------------------------


def test_one_binding_per_instance_and_reg_id(rules, loc):
    c1 = f'<{PC};ob>;+sip.instance="{INSTANCE}";reg-id=1'
    out = register(rules, loc, reg(c1, extra=["Supported: outbound, path"]))
    [b] = out.changes
    assert (b.key, b.instance, b.reg_id) == (f"{INSTANCE};reg-id=1", INSTANCE, 1)
    params = listed(out.response)[f"{PC};ob"]
    assert params["+sip.instance"] == f'"{INSTANCE}"' and params["reg-id"] == "1"
    moved = f'<sip:alice@198.51.100.7:40000;ob>;+sip.instance="{INSTANCE}";reg-id=1'
    out = register(rules, loc, reg(moved, cseq=2), T0 + 10)
    assert list(listed(out.response)) == ["sip:alice@198.51.100.7:40000;ob"]
    assert len(loc) == 1
    second_flow = f'<sip:alice@198.51.100.7:40001;ob>;+sip.instance="{INSTANCE}";reg-id=2'
    out = register(rules, loc, reg(second_flow, cseq=3), T0 + 20)
    assert len(listed(out.response)) == 2


def test_instance_without_reg_id_is_the_key(rules, loc):
    register(rules, loc, reg(f'<{PC}>;+sip.instance="{INSTANCE}"'))
    out = register(rules, loc, reg(f'<sip:alice@192.0.2.99>;+sip.instance="{INSTANCE}"', cseq=2))
    [b] = out.changes
    assert (b.key, b.reg_id) == (INSTANCE, None)
    assert list(listed(out.response)) == ["sip:alice@192.0.2.99"]


def test_reg_id_without_instance_is_ignored(rules, loc):
    out = register(rules, loc, reg(f"<{PC}>;reg-id=1"))
    [b] = out.changes
    assert (b.key, b.instance, b.reg_id) == (PC, None, None)
    assert "reg-id" not in listed(out.response)[PC]


def test_instance_binding_removed_by_expires_zero_even_from_a_new_address(rules, loc):
    register(rules, loc, reg(f'<{PC}>;+sip.instance="{INSTANCE}";reg-id=1'))
    out = register(
        rules,
        loc,
        reg(f'<sip:alice@192.0.2.99>;+sip.instance="{INSTANCE}";reg-id=1', expires=0, cseq=2),
        T0 + 1,
    )
    assert [b.deleted for b in out.changes] == [True] and listed(out.response) == {}


def test_an_outbound_flow_is_confirmed_with_require_outbound(rules, loc):
    """RFC 5626 §6: a UA that supports outbound and registered a flow straight to the
    registrar is told so (libre and PJSIP keep the flow alive only then)."""
    flow = f'<{PC};ob>;+sip.instance="{INSTANCE}";reg-id=1'
    out = register(rules, loc, reg(flow, extra=["Supported: path, outbound"]))
    assert out.response.get_all("require") == ["outbound"]
    assert out.response.get("flow-timer") is None, "no Flow-Timer unless one is set"
    timed = RegistrarRules("example.test", flow_timer=25)
    out = register(timed, Location(), reg(flow, extra=["Supported: outbound"]))
    assert (out.response.get("require"), out.response.get("flow-timer")) == ("outbound", "25")


@pytest.mark.parametrize(
    "contact, extra",
    [
        (f'<{PC};ob>;+sip.instance="{INSTANCE}";reg-id=1', []),
        (f'<{PC}>;+sip.instance="{INSTANCE}"', ["Supported: outbound"]),
        (f"<{PC}>;reg-id=1", ["Supported: outbound"]),
        (f"<{PC}>", ["Supported: outbound"]),
        (
            f'<{PC};ob>;+sip.instance="{INSTANCE}";reg-id=1',
            ["Supported: outbound", "Via: SIP/2.0/UDP 192.0.2.50;branch=z9hG4bK-edge"],
        ),
        (
            f'<{PC};ob>;+sip.instance="{INSTANCE}";reg-id=1',
            [
                "Supported: outbound, path",
                "Via: SIP/2.0/UDP 192.0.2.50;branch=z9hG4bK-edge",
                "Path: <sip:192.0.2.50;lr>",
            ],
        ),
    ],
    ids=[
        "no-supported",
        "no-reg-id",
        "no-instance",
        "plain",
        "edge-without-path",
        "edge-path-without-ob",
    ],
)
def test_require_outbound_only_for_an_outbound_flow_that_ends_here(rules, loc, contact, extra):
    """No Require: outbound to a UA that did not ask for it, for a binding that is not
    a flow, or past an edge proxy that did not say it keeps the flow (``;ob``)."""
    out = register(rules, loc, reg(contact, extra=extra))
    assert out.response.get("require") is None


def test_an_edge_proxy_keeping_the_flow_gets_require_outbound(rules, loc):
    flow = f'<{PC};ob>;+sip.instance="{INSTANCE}";reg-id=1'
    out = register(
        rules,
        loc,
        reg(
            flow,
            extra=[
                "Supported: outbound, path",
                "Via: SIP/2.0/UDP 192.0.2.50;branch=z9hG4bK-edge",
                "Path: <sip:192.0.2.50;lr;ob>",
            ],
        ),
    )
    assert out.response.get("require") == "outbound"


def test_removing_a_flow_is_no_flow_to_confirm(rules, loc):
    flow = f'<{PC};ob>;+sip.instance="{INSTANCE}";reg-id=1'
    register(rules, loc, reg(flow, extra=["Supported: outbound"]))
    out = register(rules, loc, reg(flow, expires=0, cseq=2, extra=["Supported: outbound"]))
    assert out.response.get("require") is None


# -- max_contacts --------------------------------------------------------------------------------


def test_too_many_contacts_is_403_and_nothing_applied(rules, loc):
    register(rules, loc, reg(f"<{PC}>", "<sip:alice@192.0.2.11>"))
    fails(403, rules, loc, reg("<sip:alice@192.0.2.12>", "<sip:alice@192.0.2.13>", cseq=2))
    out = register(rules, loc, reg("<sip:alice@192.0.2.12>", cseq=2))
    assert len(listed(out.response)) == 3
    fails(403, rules, loc, reg("<sip:alice@192.0.2.13>", call_id="new"))


def test_max_contacts_ignores_expired_and_removed_bindings(rules, loc):
    register(
        rules, loc, reg(f"<{PC}>", "<sip:alice@192.0.2.11>", "<sip:alice@192.0.2.12>", expires=60)
    )
    register(rules, loc, reg(f"<{PC}>;expires=0", cseq=2))
    out = register(rules, loc, reg("<sip:alice@192.0.2.13>", cseq=3))
    assert len(listed(out.response)) == 3
    out = register(
        rules, loc, reg("<sip:alice@192.0.2.14>", "<sip:alice@192.0.2.15>", cseq=4), T0 + 61
    )
    assert len(listed(out.response)) == 3


def test_a_table_over_the_limit_can_still_be_refreshed_and_cleaned(rules, loc):
    for i in range(5):
        loc.put(
            Binding(
                AOR,
                f"sip:alice@192.0.2.{20 + i}",
                f"sip:alice@192.0.2.{20 + i}",
                T0 + 600,
                "old",
                1,
                origin="n2",
                updated_at=T0 - 5,
            )
        )
    out = register(rules, loc, reg("<sip:alice@192.0.2.20>", call_id="x"))
    assert len(listed(out.response)) == 5
    out = register(rules, loc, reg("<sip:alice@192.0.2.21>;expires=0", call_id="x", cseq=2))
    assert len(listed(out.response)) == 4
    fails(403, rules, loc, reg("<sip:alice@192.0.2.99>", call_id="x", cseq=3))


@pytest.mark.parametrize("contact", ["<sip:alice@example.test>", "<sip:alice@ALIAS.test.:5070>"])
def test_a_contact_reaching_the_domain_is_refused(rules, loc, contact):
    with pytest.raises(SipError) as err:
        register(rules, loc, reg(contact))
    assert (err.value.status, err.value.reason) == (403, "Contact Points At This Cluster")
    assert loc.get("sip:alice@example.test") in (None, {})


def test_a_contact_reaching_a_node_is_refused_but_its_removal_is_not(loc):
    cluster = ClusterAddresses(["example.test"], [("192.0.2.1", 5060), ("192.0.2.2", 5060)])
    rules = RegistrarRules("example.test", cluster=cluster)
    with pytest.raises(SipError, match="Contact Points At This Cluster"):
        register(rules, loc, reg("<sip:alice@192.0.2.2>"))
    register(rules, loc, reg("<sip:alice@192.0.2.2:5062>"))
    register(rules, loc, reg("<sip:alice@192.0.2.2>;expires=0", cseq=2))
