"""The layers stay apart: the SIP core does no I/O and the store knows no actor.

``sipcore/`` is pure SIP (sans-IO, the clock passed in), so that it can be tested with a
fake clock and reused by any runtime; ``store/`` is persistence, used by actors and the
master but never using them. Each module's imports are read from its syntax tree, so a
function-level import is caught as well as a top-level one.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: modules that do I/O, block, or belong to an outer layer
IO_MODULES = {
    "socket",
    "select",
    "selectors",
    "ssl",
    "asyncio",
    "threading",
    "multiprocessing",
    "subprocess",
    "signal",
    "gevent",
    "zmq",
    "peewee",
    "psycopg2",
    "sqlite3",
    "flask",
    "requests",
    "urllib.request",
    "http",
    "dns.resolver",
    "dns.query",
    "locust",
    "actors",
    "store",
    "web",
    "run",
}
OUTER_MODULES = {"actors", "web", "run", "gevent", "zmq", "flask", "locust"}


def imports_of(path: pathlib.Path) -> set[str]:
    """Every absolute module name that the file imports, at any depth."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def offending(name: str, forbidden: set[str]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


def modules(package: str) -> list[pathlib.Path]:
    return sorted((ROOT / package).glob("*.py"))


@pytest.mark.parametrize("path", modules("sipcore"), ids=lambda p: p.name)
def test_sipcore_module_does_no_io(path):
    bad = sorted(n for n in imports_of(path) if offending(n, IO_MODULES))
    assert not bad, f"sipcore/{path.name} imports {bad}"


@pytest.mark.parametrize("path", modules("store"), ids=lambda p: p.name)
def test_store_module_uses_no_actor_or_web(path):
    bad = sorted(n for n in imports_of(path) if offending(n, OUTER_MODULES))
    assert not bad, f"store/{path.name} imports {bad}"


def test_the_check_sees_a_forbidden_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import gevent.socket\n    from actors.bus import Bus\n")
    assert {n for n in imports_of(sample) if offending(n, IO_MODULES)} == {
        "gevent.socket",
        "actors.bus",
    }


@pytest.mark.parametrize("path", modules("web"), ids=lambda p: p.name)
def test_web_uses_only_the_bus_of_a_node(path):
    """The bus, the lab's control socket (a supervisor, not a node), the
    authoritative DNS server (the lab's and the master's, no node runs one) and the
    notice sender (webhook and e-mail, shared by the alarms and the nodes)."""
    bad = sorted(
        n
        for n in imports_of(path)
        if offending(n, {"actors"})
        and n not in ("actors.bus", "actors.lab_control", "actors.dnsserver", "actors.notify")
    )
    assert not bad, f"web/{path.name} imports {bad}"
