"""``actors.master_api.ask_master`` against a real HTTP server on loopback: every way a
master's answer can be wrong gives a clear error, never a traceback or a huge read."""

import http.server
import socket
import threading

import pytest

from actors.master_api import MAX_REPLY, MasterError, ask_master

ANSWERS = {
    "/ok": (200, b'{"version": 7}'),
    "/refused": (403, b'{"error": "bad token"}'),
    "/refused-html": (500, b"<html>oops</html>"),
    "/huge": (200, b'{"x": "' + b"a" * (MAX_REPLY + 10) + b'"}'),
    "/garbage": (200, b"not json at all"),
    "/list": (200, b"[1, 2]"),
}


class _Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.bodies.append(self.rfile.read(length))  # type: ignore[attr-defined]
        code, body = ANSWERS[self.path]
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def master():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_json_object_comes_back_and_the_body_goes_out(master):
    server, url = master
    assert ask_master(url + "/", "/ok", method="POST", body=b'{"a": 1}') == {"version": 7}
    assert server.bodies == [b'{"a": 1}']


@pytest.mark.parametrize(
    "path, message",
    [
        ("/refused", r"the master refused \(403\): bad token"),
        ("/refused-html", r"the master refused \(500\): Internal Server Error"),
        ("/huge", "too large"),
        ("/garbage", "not JSON"),
        ("/list", "not a JSON object"),
    ],
)
def test_every_bad_answer_is_a_clear_error(master, path, message):
    with pytest.raises(MasterError, match=message):
        ask_master(master[1], path)


def test_the_caller_names_its_error_and_what_was_refused(master):
    class JoinFailed(Exception):
        pass

    with pytest.raises(JoinFailed, match=r"the master refused the join \(403\): bad token"):
        ask_master(master[1], "/refused", refused="the master refused the join", error=JoinFailed)


def test_an_unreachable_master_is_named():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(MasterError, match=f"cannot reach the master at http://127.0.0.1:{port}"):
        ask_master(f"http://127.0.0.1:{port}", "/ok", timeout=5)
