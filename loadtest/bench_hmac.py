"""The nonce MAC two ways: hash states keyed once and copied per MAC (sipcore.digest's
``_mac``) against the standard library's one-shot ``hmac.digest``; ns per MAC, best of 7.

    taskset -c 1 .venv/bin/python loadtest/bench_hmac.py
"""

import hashlib
import hmac
import timeit

KEY = b"k" * 32
MESSAGE = b"x" * 32
INNER = hashlib.sha256(bytes(b ^ 0x36 for b in KEY.ljust(64, b"\0")))
OUTER = hashlib.sha256(bytes(b ^ 0x5C for b in KEY.ljust(64, b"\0")))


def keyed_once() -> bytes:
    """sipcore.digest's way: copy the keyed states."""
    inner = INNER.copy()
    inner.update(MESSAGE)
    outer = OUTER.copy()
    outer.update(inner.digest())
    return outer.digest()


def one_shot() -> bytes:
    """The standard library's way."""
    return hmac.digest(KEY, MESSAGE, "sha256")


def main() -> None:
    """Print ns per MAC of each way."""
    assert keyed_once() == one_shot()
    for way in (keyed_once, one_shot):
        best = min(timeit.repeat(way, number=100000, repeat=7)) / 100000
        print(f"{way.__name__}: {best * 1e9:.0f} ns per MAC")


if __name__ == "__main__":
    main()
