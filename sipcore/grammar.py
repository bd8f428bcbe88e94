"""The character sets of the SIP grammar (RFC 3261 §25.1), defined once.

The general parser, the usual-REGISTER recogniser and the digest reader all
read tokens and separators; they take them from here, each in the form it
needs: a string for ``str.strip`` (the fastest test that a text is all token
characters) or a regular-expression character class.
"""

import re

DIGITS = "0123456789"
#: ``HEXDIG`` of either case (nonce-counts, IPv6 references, tel URIs)
HEXDIG = DIGITS + "abcdefABCDEF"
ALPHANUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" + DIGITS
#: ``mark``: with alphanum, the ``unreserved`` characters of a URI
MARK = "-_.!~*'()"
#: ``token`` characters besides alphanum: ``-.!%*_+`'~``
TOKEN_MARKS = "-.!%*_+`'~"
#: characters of a host name or IPv4 address besides alphanum (``_`` is seen in the wild)
HOST_MARKS = "-._"


def alnum_class(marks: str) -> str:
    """A regular-expression class of alphanum and ``marks``."""
    return f"[A-Za-z0-9{re.escape(marks)}]"


#: every ``token`` character, for ``not text.strip(TOKEN_CHARS)``
TOKEN_CHARS = ALPHANUM + TOKEN_MARKS
#: a ``token`` character as a regular-expression class
TOKEN_CLASS = alnum_class(TOKEN_MARKS)
#: one ``token``
TOKEN = f"{TOKEN_CLASS}+"
#: ``separators``: characters that may not appear in a token or an unquoted display name
SEPARATORS = '()<>@,;:\\"/[]?={}'
#: a separator as a regular-expression class
SEPARATOR_CLASS = f"[{re.escape(SEPARATORS)}]"
#: linear white space inside a header value, line folding included
LWS_CHARS = " \t\r\n"


def is_token(text: str) -> bool:
    """Whether ``text`` is one non-empty SIP ``token``."""
    # Letters and digits alone (REGISTER, INVITE...) need no look at the other token characters.
    return bool(text) and ((text.isascii() and text.isalnum()) or not text.strip(TOKEN_CHARS))
