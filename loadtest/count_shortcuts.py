"""Count what each parse shortcut saves, in CPU instructions per INVITE.

Parses INVITEs as ``bench_call.py``'s SIPp sends them (a new Call-ID,
branch and From tag each) and reads the views the proxy reads (Request-URI,
top Via, From, To, Contact, CSeq), with one shortcut turned off or none.
Run it under cachegrind twice, with two counts of messages, and divide
the difference: what the interpreter does once drops out::

    for n in 1000 5000; do PYTHONHASHSEED=0 USERS=1000 N=$n valgrind --tool=cachegrind \\
        --cache-sim=no --cachegrind-out-file=/dev/null \\
        python loadtest/count_shortcuts.py no_name_addr; done

``USERS`` callers share the messages: 1000 keeps every URI in the parse
caches; 1000000 makes each URI new. The figures in the shortcuts'
docstrings come from here: ``build`` counts the making of the messages,
to take off; ``none`` keeps every shortcut.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sipcore import headers, message, uri

#: shortcut to turn off -> how
OFF = {
    "none": lambda: None,
    "build": lambda: setattr(message, "parse_message", lambda data: None),
    "no_plain_fields": lambda: setattr(message, "_plain_fields", lambda lines: None),
    "no_start_line": lambda: setattr(message, "_start_line", message._start_line_general),
    "no_sip_uri": lambda: setattr(uri, "_sip_uri", lambda text: None),
    "no_name_addr": lambda: setattr(uri, "_parse_name_addr", uri._parse_name_addr_general),
    "no_sent_by": lambda: setattr(message, "parse_via", headers._parse_via),
}


def invites(n: int, seed: int, users: int) -> list[bytes]:
    """``n`` INVITEs from ``users`` callers, each with its own Call-ID, branch and tag."""
    out = []
    for i in range(n):
        user = f"caller{seed}x{i % users}"
        out.append(
            (
                f"INVITE sip:callee@example.test SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{seed}-{i}-1;rport\r\n"
                f"From: <sip:{user}@example.test>;tag={seed}SIPpTag00{i}\r\n"
                f"To: <sip:callee@example.test>\r\n"
                f"Call-ID: {seed}-{i}@127.0.0.1\r\nCSeq: 2 INVITE\r\n"
                f"Contact: <sip:{user}@127.0.0.1:5061;transport=UDP>\r\nMax-Forwards: 70\r\n"
                f"Content-Type: application/sdp\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )
    return out


def run(n: int, seed: int, users: int) -> None:
    """Parse ``n`` INVITEs and read their views."""
    for data in invites(n, seed, users):
        msg = message.parse_message(data)
        if isinstance(msg, message.Request):
            msg.validate()
            msg.ruri  # noqa: B018 - each view is read as the proxy reads it
            msg.top_via  # noqa: B018
            msg.from_  # noqa: B018
            msg.to  # noqa: B018
            msg.contacts  # noqa: B018
            msg.cseq  # noqa: B018


def main() -> None:
    """Turn off the shortcut named on the command line, then parse."""
    OFF[sys.argv[1] if len(sys.argv) > 1 else "none"]()
    users = int(os.environ.get("USERS", "1000"))
    run(2000, 0, users)
    run(int(os.environ.get("N", "5000")), 1, users)


if __name__ == "__main__":
    main()
