"""The 401 to a usual REGISTER without credentials, written without the general parser.

The challenge front (``actors.front``) answers every REGISTER that carries
no credentials with a 401, and for such a request parsing and validating
it in full costs several times all the rest. ``QuickChallenge`` takes the
usual REGISTERs that ``sipcore.usual_register.scan`` recognises and that
carry no Authorization, and writes the 401 straight from their text: the
very bytes that the general path (``parse_message``, ``validate``,
``stamp_via``, ``RegistrarRules.check``, ``challenge_bytes``) writes, to
the same destination. Anything else gets ``None``, and the general path
answers it. ``tests/test_quick_challenge.py`` holds the two to the same
bytes.
"""

from .usual_register import scan


class QuickChallenge:
    """Writes the 401 for the usual REGISTERs without credentials."""

    def __init__(self, domains):
        """``domains``: the host names a REGISTER may be for (``RegistrarRules.domains``)."""
        self.domains = frozenset(domains)

    def answer(self, data: bytes, ip: str, port: int, challenges, new_tag):
        """``(response bytes, (host, port))`` for the datagram ``data`` from
        ``ip:port``, or None when the general path must answer it.

        ``challenges()`` gives the WWW-Authenticate values and ``new_tag()``
        the To tag; neither is called for a datagram left to the general path.
        """
        usual = scan(data, ip, port, self.domains)
        if usual is None or "authorization" in usual.fields:
            return None
        return usual.challenge(challenges(), new_tag()), usual.dest
