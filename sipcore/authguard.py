"""Failed authentications counted, and bans against password guessing.

Sans-IO: every method takes ``now`` (wall-clock seconds, so that a ban
made on one node means the same on its peers). ``Authenticator`` asks the
guard before it checks a password and tells it each wrong answer and each
success; the guard counts failures per source address and per user name in
a fixed window, and past a threshold bans:

- a *source* (an IP address): every request of it that carries credentials
  is refused, with no password check, even with the right password;
- a *user* name (known or not, so that a lockout tells nothing about who
  exists): its credentials are refused, with no password check, except from
  sources that authenticated as that user before the lockout began, so a
  guesser spread over many addresses cannot lock a user's own phones out.

Bans are values (``Ban``) that the node shares with its peers (``add``
applies one a peer made) and that the control endpoint lists and lifts.
Every table is bounded.
"""

from collections.abc import Iterable
from dataclasses import dataclass

SOURCE = "source"
USER = "user"
#: seconds a source that authenticated stays ``trusted``
TRUST_TIME = 3600.0


@dataclass(frozen=True, slots=True)
class Ban:
    """One ban: who, until when, and where it was made."""

    kind: str
    """``SOURCE`` (an IP address) or ``USER`` (a user name)."""
    key: str
    """The address or the user name."""
    until: float
    """Wall-clock time the ban ends."""
    origin: str = ""
    """Id of the node that made it (empty: made here or by an operator)."""


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """The ``[auth]`` settings of the guard."""

    max_failures: int = 10
    """Wrong answers from one source within ``window`` that ban it (0: never)."""
    max_user_failures: int = 30
    """Wrong answers for one user name within ``window`` that lock it (0: never)."""
    window: float = 60.0
    """Seconds over which failures are counted."""
    ban_time: float = 600.0
    """Seconds a ban or a lockout lasts."""
    max_entries: int = 100_000
    """Bound on each table (failure counters, bans, known sources)."""


#: the guard's settings when none are given: the defaults of ``[auth]``
DEFAULT_GUARD = GuardSettings()


class AuthGuard:
    """Counts failures and keeps bans (see the module's text)."""

    def __init__(self, settings: GuardSettings = DEFAULT_GUARD):
        self.settings = settings
        #: (kind, key) -> [failures, end of the window]
        self._failures: dict[tuple[str, str], list[float]] = {}
        #: (kind, key) -> Ban
        self._bans: dict[tuple[str, str], Ban] = {}
        #: (user, source) -> last success time
        self._known: dict[tuple[str, str], float] = {}
        #: source -> last success time, as any user (``trusted``)
        self._good: dict[str, float] = {}
        #: bans made here and not yet taken by ``take_new``
        self._new: list[Ban] = []
        self.stats = {"failures": 0, "refused": 0, "bans": 0}
        #: counts every ban made or lifted (a keeper writes them out when it moved)
        self.version = 0

    def refused(self, source: str | None, user: str, now: float) -> bool:
        """Whether credentials of ``user`` from ``source`` must be refused
        unchecked: the source is banned, or the user is locked and the
        source did not authenticate as them before the lockout."""
        bans = self._bans
        if not bans:
            return False
        if source is not None and self._active(SOURCE, source, now):
            self.stats["refused"] += 1
            return True
        if self._active(USER, user, now) is not None and (user, source or "") not in self._known:
            self.stats["refused"] += 1
            return True
        return False

    def _active(self, kind: str, key: str, now: float) -> Ban | None:
        ban = self._bans.get((kind, key))
        if ban is None:
            return None
        if ban.until <= now:
            del self._bans[(kind, key)]
            return None
        return ban

    def failed(self, source: str | None, user: str, now: float) -> None:
        """Count a wrong answer for ``user`` from ``source``; ban past a threshold."""
        s = self.settings
        self.stats["failures"] += 1
        if source is not None:
            self._count(SOURCE, source, s.max_failures, now)
        self._count(USER, user, s.max_user_failures, now)

    def _count(self, kind: str, key: str, limit: int, now: float) -> None:
        if limit <= 0:
            return
        table = self._failures
        entry = table.get((kind, key))
        if entry is None or entry[1] <= now:
            if len(table) >= self.settings.max_entries:
                self._sweep(table, now)
            entry = table[(kind, key)] = [0, now + self.settings.window]
        entry[0] += 1
        if entry[0] >= limit:
            del table[(kind, key)]
            ban = Ban(kind, key, now + self.settings.ban_time)
            self.add(ban, now, share=True)

    def _sweep(self, table: dict[tuple[str, str], list[float]], now: float) -> None:
        """Make room in a full counter table: drop ended windows, else all."""
        for k in [k for k, v in table.items() if v[1] <= now]:
            del table[k]
        if len(table) >= self.settings.max_entries:
            table.clear()

    def succeeded(self, source: str | None, user: str, now: float) -> None:
        """Remember that ``source`` authenticated as ``user`` (exempt from a
        lockout of ``user``)."""
        known = self._known
        if len(known) >= self.settings.max_entries and (user, source or "") not in known:
            horizon = now - self.settings.ban_time
            for k in [k for k, t in known.items() if t <= horizon]:
                del known[k]
            if len(known) >= self.settings.max_entries:
                known.clear()
        known[(user, source or "")] = now
        if source is not None:
            good = self._good
            if len(good) >= self.settings.max_entries and source not in good:
                good.clear()
            good[source] = now

    def trusted(self, source: str, now: float) -> bool:
        """Whether ``source`` authenticated (as anyone) within ``TRUST_TIME``: the
        node's admission control sheds its new requests last."""
        last = self._good.get(source)
        return last is not None and now - last < TRUST_TIME

    def add(self, ban: Ban, now: float, share: bool = False) -> bool:
        """Apply ``ban`` (made here, by a peer or by an operator); True when it
        is new or lasts longer than the one held. With ``share`` it is given
        to ``take_new`` too."""
        if ban.until <= now or ban.kind not in (SOURCE, USER):
            return False
        key = (ban.kind, ban.key)
        held = self._bans.get(key)
        if held is not None and held.until >= ban.until:
            return False
        bans = self._bans
        if held is None and len(bans) >= self.settings.max_entries:
            for k in [k for k, b in bans.items() if b.until <= now]:
                del bans[k]
            if len(bans) >= self.settings.max_entries:
                # Keep the longest: drop the ban that ends first.
                del bans[min(bans, key=lambda k: bans[k].until)]
        bans[key] = ban
        self.stats["bans"] += 1
        self.version += 1
        if share:
            self._new.append(ban)
            del self._new[: -self.settings.max_entries]
        return True

    def lift(self, kind: str, key: str, share: bool = True) -> bool:
        """End a ban now; True when there was one. Its failure count restarts
        too. With ``share``, the lifting is given to ``take_new`` (as a ban
        ending at 0) for the peers."""
        self._failures.pop((kind, key), None)
        lifted = self._bans.pop((kind, key), None) is not None
        self.version += lifted
        if lifted and share:
            self._new.append(Ban(kind, key, 0.0))
        return lifted

    def apply_peer(self, origin: str, bans: Iterable[tuple[str, str, float]], now: float) -> int:
        """Apply ``(kind, key, until)`` bans a peer ``origin`` shared (until 0:
        lifted there); returns how many changed anything. Never shared again."""
        changed = 0
        for kind, key, until in bans:
            if until == 0:
                changed += self.lift(kind, key, share=False)
            else:
                changed += self.add(Ban(kind, key, until, origin), now)
        return changed

    def bans(self, now: float) -> list[Ban]:
        """Every ban in force, the one ending first first."""
        return sorted((b for b in self._bans.values() if b.until > now), key=lambda b: b.until)

    def take_new(self) -> list[Ban]:
        """The bans made or lifted here since the last call (to share with the peers)."""
        new, self._new = self._new, []
        return new
