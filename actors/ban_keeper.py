"""Bans against password guessing that outlive a restart and reach a node that joins.

The guard (``sipcore.authguard``) holds its bans in memory, and the node
gives each new one to its peers as it is made. Two cases escape that: a
node that restarts (its bans would end with it), and a node that starts
or resyncs after a ban was made (it missed the message). So the keeper
writes every ban in force to ``bans.json`` in the node's data folder
(0600, replaced atomically) within a second of a change, loads it at start,
and gives every ban in force to the peers again whenever one of them asks
this node for a snapshot (which a node does when it starts, reconnects or
finds a gap). A ban applied twice changes nothing.
"""

import json
import logging
import os
import time

import gevent

from sipcore.authguard import SOURCE, USER, AuthGuard, Ban
from store.files import write_private

log = logging.getLogger(__name__)

#: how often the keeper looks for a change to write (seconds)
SAVE_EVERY = 1.0
#: bans written at most (the guard bounds its table too)
MAX_SAVED = 100_000


class BanKeeper:
    """Writes the guard's bans to ``path`` and reads them back."""

    def __init__(self, guard: AuthGuard, path: str, clock=time.time):
        self.guard = guard
        self.path = path
        self.clock = clock
        self._saved_version = -1

    def load(self) -> int:
        """Apply the bans of the file still in force; how many (a bad file is logged)."""
        try:
            with open(self.path, encoding="utf-8") as f:
                rows = json.load(f)
            if not isinstance(rows, list):
                raise ValueError("not a list")
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as e:
            log.warning("bans not restored from %s: %s", self.path, e)
            return 0
        now = self.clock()
        applied = 0
        for row in rows[:MAX_SAVED]:
            try:
                kind, key, until, origin = row
                if kind in (SOURCE, USER) and isinstance(key, str) and isinstance(origin, str):
                    applied += self.guard.add(Ban(kind, key, float(until), origin), now)
            except (TypeError, ValueError):
                continue
        self._saved_version = self.guard.version
        if applied:
            log.warning("%d bans restored from %s", applied, self.path)
        return applied

    def save(self) -> bool:
        """Write the bans in force if they changed since the last write; whether it wrote."""
        version = self.guard.version
        if version == self._saved_version:
            return False
        bans = self.guard.bans(self.clock())[-MAX_SAVED:]
        write_private(self.path, json.dumps([[b.kind, b.key, b.until, b.origin] for b in bans]))
        self._saved_version = version
        return True

    def run(self) -> None:
        """Save within ``SAVE_EVERY`` of each change, for ever (a failed write is retried)."""
        while True:
            gevent.sleep(SAVE_EVERY)
            try:
                self.save()
            except OSError as e:
                log.warning("bans not saved to %s: %s", self.path, e)


def attach_ban_keeper(node) -> BanKeeper:
    """Give ``node`` its keeper: restore the saved bans, keep saving them, and give them
    all to the peers each time one asks this node for a snapshot."""
    keeper = BanKeeper(node.guard, os.path.join(node.cfg.data_dir, "bans.json"))
    keeper.load()
    guard = node.guard
    replicator = node.replicator

    def resync(peer: str) -> None:
        bans = guard.bans(time.time())
        if bans:
            log.info("%s asked for a snapshot: giving it the %d bans in force", peer, len(bans))
            replicator.share_bans(bans)

    replicator.on_snapshot_request = resync
    node.group.spawn(keeper.run).link_exception(node.actor_died)
    return keeper
