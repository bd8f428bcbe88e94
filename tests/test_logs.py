"""The node's logging: tracebacks bounded per place that logs them (``actors.logs``)."""

import io
import logging

from actors.logs import ExceptionLimit


def _logger(stream: io.StringIO) -> logging.Logger:
    handler = logging.StreamHandler(stream)
    handler.addFilter(ExceptionLimit(rate=1.0))
    logger = logging.getLogger("tests.logs.bounded")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_a_traceback_logged_again_and_again_is_bounded_per_place():
    stream = io.StringIO()
    log = _logger(stream)
    for n in range(1000):
        try:
            raise ValueError(f"bad packet {n}")
        except ValueError:
            log.exception("handling a message from %s failed", "192.0.2.7")
        log.info("an ordinary line %d", n)
    try:
        raise KeyError("elsewhere")
    except KeyError:
        log.exception("another place failed")
    text = stream.getvalue()
    assert text.count("handling a message from 192.0.2.7 failed") <= 12
    assert text.count("Traceback") <= 13
    assert text.count("an ordinary line") == 1000
    assert "another place failed" in text, "each place has its own budget"
