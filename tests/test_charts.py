"""The calls chart (server-side SVG) on the Calls page, and ASR and average call length per
node on the Nodes page, from call records folded by the real store."""

import re
import time
import xml.etree.ElementTree as ET

import pytest

from store import cdrs
from store import master as ms
from tests.test_web import PASSWORD, Poked, login
from web import create_app
from web.charts import calls_chart

A, B = "sip:amy@example.test", "sip:bob@example.test"


@pytest.fixture
def app(tmp_path):
    ms.init_master_store(f"sqlite:///{tmp_path}/master.db")
    ms.setup("example.test")
    ms.add_admin("admin", PASSWORD)
    ms.save_node("node1", "127.0.0.11:5060", "tcp://127.0.0.11:7003", "k" * 40)
    yield create_app({"SECRET_KEY": "k"}, Poked())
    ms.close_master_store()


def calls(node: str, start: float, specs) -> None:
    """Store the events of calls ``(call id, offset, outcome)``: answered for 30 s, or
    failed with 486 (busy) or 500."""
    events, seq = [], 0
    for call_id, offset, outcome in specs:
        at = start + offset
        kinds = [("attempt", at, None)]
        if outcome == "completed":
            kinds += [("answer", at + 2, None), ("bye", at + 32, None)]
        else:
            kinds += [("failure", at + 1, 486 if outcome == "busy" else 500)]
        for kind, when, status in kinds:
            seq += 1
            events.append(
                {
                    "seq": seq,
                    "at": when,
                    "kind": kind,
                    "call_id": call_id,
                    "caller": A,
                    "callee": B,
                    "source": "udp:127.0.0.1:5070",
                    "status": status,
                }
            )
    cdrs.store_events(node, events)


def test_timeline_counts_calls_and_failures_per_slot(app):
    calls(
        "node1",
        1000.0,
        [
            ("a", 0, "completed"),
            ("b", 10, "busy"),
            ("c", 3599, "failed"),
            ("d", 3600, "completed"),
            ("e", 7300, "completed"),
        ],
    )
    slots = cdrs.timeline(1000.0, 1000.0 + 3 * 3600, 3)
    assert [(s["calls"], s["failures"]) for s in slots] == [(3, 2), (1, 0), (1, 0)]
    assert slots[1]["start"] == 4600.0 and slots[-1]["end"] == 11800.0
    with pytest.raises(ValueError):
        cdrs.timeline(5.0, 5.0)


def test_chart_is_svg_with_bars_in_proportion():
    svg = str(
        calls_chart(
            [
                {"start": 0.0, "end": 60.0, "calls": 4, "failures": 1},
                {"start": 60.0, "end": 120.0, "calls": 2, "failures": 2},
            ]
        )
    )
    root = ET.fromstring(svg)
    rects = root.findall("{http://www.w3.org/2000/svg}rect")
    heights = [float(r.get("height")) for r in rects]
    assert heights[0] == 2 * heights[2] == 4 * heights[1] and heights[3] == heights[2]
    assert "00:00 to 00:01 UTC: 4 calls, 1 failures" in svg
    assert str(calls_chart([])) == ""


def test_calls_page_shows_the_chart_and_nodes_page_the_asr(app):
    now = time.time()
    calls(
        "node1",
        now - 7000,
        [("a", 0, "completed"), ("b", 60, "completed"), ("c", 120, "busy"), ("d", 180, "failed")],
    )
    c = app.test_client()
    login(c)
    page = c.get("/calls").get_data(as_text=True)
    assert '<svg id="calls-chart"' in page
    assert len(re.findall(r'class="calls"', page)) == 24
    assert ": 4 calls, 2 failures" in page
    page = c.get(f"/calls?since={now - 3600:.0f}&until={now:.0f}").get_data(as_text=True)
    assert ": 4 calls" not in page  # the chart follows the filtered range
    page = c.get("/").get_data(as_text=True)
    assert '<td class="asr">50% of 4</td>' in page and '<td class="acl">30.0</td>' in page
