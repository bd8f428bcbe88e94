"""The node's in-memory directory of its users' HA1s, kept in step with the store."""

import logging
import time
from collections.abc import Callable

from store import users as user_store

log = logging.getLogger(__name__)


class UserDirectory:
    """In-memory HA1 lookup, reloaded when the store's users change.

    Every ``refresh`` seconds it reads the store's users version and
    reloads the whole table only when that moved (a password changed, a
    user was disabled or deleted). A miss reads the store at once, so a
    user added while the node runs can register immediately.
    """

    def __init__(self, domain: str, refresh: float = 10.0, clock: Callable[[], float] = time.time):
        self.domain = domain
        self.refresh = refresh
        self.clock = clock
        self.users: dict[str, dict[str, str]] = {}
        self.checked_at = 0.0
        self.version: int | None = None

    def reload(self) -> None:
        """Read every user of the domain."""
        version = user_store.users_version()
        self.users = user_store.load_user_ha1s(self.domain)
        self.version = version
        self.checked_at = self.clock()

    def expire(self) -> None:
        """Make the next lookup reload every user (on SIGHUP).

        The reload happens in the lookup's greenlet, the registrar's, which
        owns the store connection, not in the signal handler's.
        """
        self.checked_at = 0.0
        self.version = None

    def lookup(self, username: str) -> dict[str, str] | None:
        """HA1 values of ``username`` or None."""
        if self.clock() - self.checked_at > self.refresh:
            self.checked_at = self.clock()
            try:
                if user_store.users_version() != self.version:
                    self.reload()
            except Exception as e:
                # Keep authenticating from memory while the store is away.
                log.warning("cannot refresh users: %s", e)
        found = self.users.get(username)
        if found is None:
            found = user_store.get_user_ha1(username, self.domain)
            if found is not None:
                self.users[username] = found
        return found
