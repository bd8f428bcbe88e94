"""Emergency numbers (sipcore.emergency): 911 and 9911 (behind the outside-line prefix) are
emergency calls for every defence and for dialing, the same from the raw request line and
from the parsed Request-URI; a number dressed up as one (suffixes, separators, other user
parameters, percent-encoding, ``+``) is not. Dialing sends 9911 to the emergency gateway as
911 with the callback number of the location the phone is in. Locations with their civic
address go through the dial plan's API and page, checked and escaped."""

import pytest

from sipcore.dialing import Dialing
from sipcore.dialplan import DialPlanError, parse_dialplan
from sipcore.digest import Authenticator
from sipcore.emergency import EmergencyNumbers
from sipcore.forking import ProxyCore
from sipcore.location import Location
from sipcore.overload import ADMIT, SHED, Admission
from sipcore.proxy import ProxySettings
from sipcore.uri import parse_uri
from store import master as ms
from tests.test_dialing import PLAN, PSAP, forwarded
from tests.test_overload import SETTINGS, overloaded
from tests.test_overload import request as raw_request
from tests.test_proxy_core import ALICE, DOMAIN, PROXY, WALL, lookup, out, request
from tests.test_web import PASSWORD, Poked, login
from tests.test_web_dialplan import api as dialplan_api
from web import create_app

NUMBERS = EmergencyNumbers(frozenset({"911", "112"}), "9")

EMERGENCY = [
    "sip:911@example.test",
    "sip:9911@example.test",
    "sips:911@example.test",
    "tel:112",
    "tel:9112",
    "sip:911@example.test;user=phone",
    "sip:911;phone-context=example.test@example.test;user=phone",
    "sip:9911@evil.example",
    "SIP:911@example.test",
    "TEL:112",
]
DRESSED_UP = [
    "sip:9110@example.test",
    "sip:911555@example.test",
    "sip:99911@example.test",
    "sip:9-911@example.test",
    "sip:911%23@example.test",
    "sip:%39%31%31@example.test",
    "sip:+911@example.test",
    "sip:911;isub=1@example.test;user=phone",
    "sip:911;phone-context=@example.test",
    "sip:911;phone-context=a;x=1@example.test",
    "sips:9110@example.test",
    "tel:9-911",
    "tel:+911",
    "sip:example.test",
    "sip:91@example.test",
]


@pytest.mark.parametrize("uri", EMERGENCY)
def test_emergency_numbers_with_and_without_the_outside_line_prefix(uri):
    assert NUMBERS.of_uri(parse_uri(uri)) in ("911", "112")
    assert NUMBERS.invite(f"INVITE {uri} SIP/2.0\r\n".encode())


@pytest.mark.parametrize("uri", DRESSED_UP)
def test_a_number_dressed_up_as_an_emergency_number_is_none(uri):
    assert NUMBERS.of_uri(parse_uri(uri)) is None
    assert not NUMBERS.invite(f"INVITE {uri} SIP/2.0\r\n".encode())


def test_no_prefix_no_numbers_and_other_methods():
    plain = EmergencyNumbers(frozenset({"911"}))
    assert plain.number("911") == "911" and plain.number("9911") is None
    assert not EmergencyNumbers() and EmergencyNumbers().number("911") is None
    assert not NUMBERS.invite(b"REGISTER sip:911@example.test SIP/2.0\r\n")
    assert not NUMBERS.invite(b"CANCEL sip:911@example.test SIP/2.0\r\n")
    assert not NUMBERS.invite(b"\xff\xfe garbage") and not NUMBERS.invite(b"")
    assert EmergencyNumbers.of(["911"]) == EmergencyNumbers(frozenset({"911"}))
    assert EmergencyNumbers.of(NUMBERS) is NUMBERS


def test_admission_admits_9911_under_overload_and_sheds_a_dressed_up_number():
    adm = Admission(SETTINGS, NUMBERS)
    now = overloaded(adm)
    assert adm.verdict(raw_request(to="sip:9911@example.test"), "10.0.0.1", 5.0, now) == ADMIT
    for to in ("sip:9-911@example.test", "sip:99110@example.test"):
        assert adm.verdict(raw_request(to=to), "10.0.0.1", 0.5, now) == SHED, to


PLACES = [
    {
        "network": "10.0.0.0/24",
        "callback": "+15551010",
        "name": "HQ floor 2",
        "address": "1 Main St, Springfield, floor 2",
    }
]


@pytest.fixture
def core():
    settings = ProxySettings(DOMAIN, *PROXY, emergency=NUMBERS)
    auth = Authenticator(DOMAIN, b"k" * 32, lookup, algorithms=("MD5",))
    c = ProxyCore(settings, Location(), auth, trying_delay=0, t1=0.5)
    users = {"bob": {"permissions": ["local"]}}
    c.dialing = Dialing(
        parse_dialplan({**PLAN, "users": users, "locations": PLACES}),
        lambda u: lookup(u) is not None,
        DOMAIN,
    )
    return c


def test_9911_reaches_the_emergency_gateway_as_911_with_the_locations_callback(core):
    assert ALICE[1].startswith("10.0.0.")
    core.receive(
        request("INVITE", "sip:9911@example.test", frm=f"sip:bob@{DOMAIN}"), ALICE, 0.0, WALL
    )
    ((inv, dest),) = forwarded(out(core))
    assert dest == PSAP and inv.uri == "sip:911@127.0.0.23:5080"
    assert inv.get("p-asserted-identity") == f"<sip:+15551010@{DOMAIN};user=phone>"
    loc = core.dialing.plan.location(ALICE[1])
    assert (loc.name, loc.address) == ("HQ floor 2", "1 Main St, Springfield, floor 2")
    assert core.dialing.plan.location("10.0.1.1") is None
    assert core.dialing.plan.location("not an address") is None


@pytest.mark.parametrize(
    "uri", ["sip:9-911@example.test", "sip:9110@example.test", "sip:911;isub=1@example.test"]
)
def test_a_dressed_up_number_is_challenged_not_routed(core, uri):
    core.receive(request("INVITE", uri, frm=f"sip:bob@{DOMAIN}"), ALICE, 0.0, WALL)
    msgs = out(core)
    assert not forwarded(msgs)
    assert [m.status for m, _ in msgs if hasattr(m, "status")][-1] in (403, 407)


@pytest.mark.parametrize(
    "place, error",
    [
        ({"name": "x\r\nInjected: 1"}, "name"),
        ({"address": "a" * 201}, "address"),
        ({"address": 5}, "address"),
        ({"floor": "2"}, "floor"),
    ],
)
def test_a_bad_location_is_refused(place, error):
    with pytest.raises(DialPlanError, match=error):
        parse_dialplan({"locations": [{"network": "10.0.0.0/24", "callback": "+1555", **place}]})


@pytest.fixture
def dashboard(tmp_path):
    """The dashboard on a fresh master store with an admin."""
    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    ms.setup("example.test")
    ms.add_admin("admin", PASSWORD)
    yield create_app({"SECRET_KEY": "test-key"}, Poked())
    ms.close_master_store()


def test_locations_with_their_civic_address_through_the_api_and_the_page(dashboard):
    c = dashboard.test_client()
    place = {
        "network": "10.1.0.0/16",
        "callback": "+15551000",
        "name": "HQ <b>2</b>",
        "address": "1 Main St, Springfield",
    }
    r = dialplan_api(c, "PUT", "/settings", {"locations": [place]})
    assert r.status_code == 200
    assert ms.config_for(r.get_json()["version"])["dialplan"]["locations"] == [place]
    for bad in (
        {**place, "address": "1 Main St\r\nX-Injected: 1"},
        {**place, "floor": 2},
        {**place, "name": "n" * 201},
    ):
        assert dialplan_api(c, "PUT", "/settings", {"locations": [bad]}).status_code == 400
    assert (
        dialplan_api(c, "PUT", "/settings", {"locations": [place]}, headers={}).status_code == 401
    )
    login(c)
    page = c.get("/dialplan").get_data(as_text=True)
    assert "HQ &lt;b&gt;2&lt;/b&gt;" in page and "1 Main St, Springfield" in page
