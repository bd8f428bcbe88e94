"""What every long-running Tandem process (node, challenge front) sets up for itself."""

import gc
import itertools
import os

#: set (``TANDEM_STRICT=1``) by the test suite for its processes too: where a node would
#: log an unexpected exception and go on (a fast path falling back to the general one, a
#: failed batch), it raises instead, so that a test fails on a bug a fallback would hide
STRICT = os.environ.get("TANDEM_STRICT") == "1"

_TAG_PREFIX = os.urandom(4).hex()
_tag_counter = itertools.count(1)


def new_tag() -> str:
    """A To tag unique to this process (each process draws its own prefix).

    A registrar's responses start no dialog, so the tag needs to be unique,
    not unguessable; a counter spares a getrandom() system call per response.
    """
    return f"{_TAG_PREFIX}{next(_tag_counter):x}"


def tune_gc() -> None:
    """Set the garbage collector for a SIP server, once its start-up objects are loaded.

    A node keeps hundreds of thousands of long-lived objects (bindings,
    transactions, nonces, parse caches); with the default thresholds the
    collector makes full passes of a third of a second under load, long
    enough to overflow socket buffers. Each request leaves garbage without
    cycles, so objects loaded at start are frozen out of the collector's sight
    and young ones are collected rarely.
    """
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    gc.enable()
