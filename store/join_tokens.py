"""Join tokens: how a new node proves to the master that an admin let it in.

``make_token`` returns a fresh random token (256 bits, URL-safe) and keeps
only its SHA-256 in the master's database (``master_join_tokens``), with
when it expires; the token itself is shown once to the admin and never
stored or logged. A token is high-entropy, so a plain hash is enough: no
one can find a token from its digest, and a forged one matches no digest.

``take_token`` spends a token in the caller's transaction: the row is
marked used by one conditional UPDATE (unused and unexpired), so two
requests with the same token cannot both get in, and a token the join
then refuses (a bad field, an id taken) is spent only if the join commits.
At most ``MAX_OPEN_TOKENS`` tokens may wait unused at once; spent and
expired ones are purged after ``KEEP_SPENT`` seconds.
"""

import hashlib
import hmac
import secrets
import time

from store.db import StoreError
from store.master import JoinToken

DEFAULT_TTL = 3600.0
"""Seconds a join token lives unless ``[master] join_token_ttl`` says otherwise."""
MAX_TTL = 30 * 86400.0
"""Longest life a join token may be given (seconds)."""
MAX_OPEN_TOKENS = 100
"""Unused, unexpired tokens the master holds at most."""
KEEP_SPENT = 7 * 86400.0
"""Seconds a spent or expired token's row is kept (to tell "used" from "unknown")."""
MAX_TOKEN_LENGTH = 128
"""Longest token text looked at; a longer one is refused unread."""


class TokenError(StoreError):
    """A join token that cannot be used: unknown, spent or expired."""


def digest(token: str) -> str:
    """The SHA-256 (hex) under which a token is kept."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def make_token(ttl: float = DEFAULT_TTL, now: float | None = None) -> tuple[str, float]:
    """A new single-use token and when it expires; ``StoreError`` past the open-token limit
    or for a bad ``ttl``."""
    if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not 0 < ttl <= MAX_TTL:
        raise StoreError(f"a join token lives more than 0 and at most {MAX_TTL:.0f} seconds")
    now = time.time() if now is None else now
    JoinToken.delete().where(
        (JoinToken.expires_at < now - KEEP_SPENT)
        | (JoinToken.used_at.is_null(False) & (JoinToken.used_at < now - KEEP_SPENT))
    ).execute()
    open_tokens = (
        JoinToken.select()
        .where(JoinToken.used_at.is_null(True), JoinToken.expires_at > now)
        .count()
    )
    if open_tokens >= MAX_OPEN_TOKENS:
        raise StoreError(
            f"{open_tokens} join tokens wait unused already (the limit): "
            "use them or let them expire"
        )
    # A fixed head: a token that began with "-" would read as an option on the command line.
    token = "tj-" + secrets.token_urlsafe(32)
    JoinToken.create(digest=digest(token), created_at=now, expires_at=now + ttl)
    return token, now + ttl


def take_token(token: object, node_id: str, now: float | None = None) -> None:
    """Spend ``token`` for ``node_id`` (call inside the join's transaction);
    ``TokenError`` saying why it cannot be used."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise TokenError("join token unknown")
    now = time.time() if now is None else now
    key = digest(token)
    row = JoinToken.get_or_none(JoinToken.digest == key)
    if row is None or not hmac.compare_digest(row.digest, key):
        raise TokenError("join token unknown")
    if row.used_at is not None:
        raise TokenError("join token already used")
    if row.expires_at <= now:
        raise TokenError("join token expired")
    taken = (
        JoinToken.update(used_at=now, used_by=node_id)
        .where(JoinToken.id == row.id, JoinToken.used_at.is_null(True), JoinToken.expires_at > now)
        .execute()
    )
    if taken != 1:
        raise TokenError("join token already used")


def open_tokens(now: float | None = None) -> int:
    """How many tokens wait unused and unexpired."""
    now = time.time() if now is None else now
    return (
        JoinToken.select()
        .where(JoinToken.used_at.is_null(True), JoinToken.expires_at > now)
        .count()
    )
