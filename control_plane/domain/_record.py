"""One loaded session's in-memory state, as one record of sub-records, each with one owner.

| field           | owner (module)                        | what                                   |
|-----------------|---------------------------------------|----------------------------------------|
| `session`       | SessionCache (`_sessions.py`)         | the Session; every part reads it       |
| `deleted`       | SessionCache (`_sessions.py`)         | gone: ends subscriptions and decisions |
| `used_at`       | SessionCache (`_sessions.py`)         | when last asked for (eviction)         |
| `turns`         | Turns (`_turns.py`)                   | open turns, queue, active, idempotency |
| `offer`         | Scheduler (`_scheduling.py`)          | the offer out, its timer, stickiness   |
| `lease`         | Leases (`_leases.py`)                 | holder, epoch, expiry, worker watermark|
| `log`           | EventLog (`_log.py`)                  | seq numbers, recent events, wake-ups   |
| `requests`      | PendingRequests (`_pending.py`)       | pending requests of the open turns     |
| `restoring`     | Restores (`_restore.py`)              | a RestoreSession under way             |
| `events_bucket` | Ingest (`_ingest.py`)                 | the events-per-second limit            |

A part reads and changes only its own fields (and reads `session`); it asks the owner of any
other through that part's public methods. Parts hold the record itself, never a copy, so a
record dropped after a failed write stays dropped for every callback still holding it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._leases import LeaseBook
from ._log import LogBook
from ._restore import Restore
from ._scheduling import OfferBook
from ._turns import TurnBook
from .access import TokenBucket
from .model import PendingRequest, Session
from .ports import LoadedSession


@dataclass(eq=False)
class SessionRecord:
    session: Session
    turns: TurnBook
    offer: OfferBook
    lease: LeaseBook
    log: LogBook
    # Pending requests of the open turns (and answered ones while their turn still runs, so a
    # reconnecting worker gets the answer again); dropped when the turn ends.
    requests: dict[str, PendingRequest]
    restoring: Restore | None = None
    events_bucket: TokenBucket | None = None  # made on the first ingest
    deleted: bool = False
    used_at: float = 0.0  # time.monotonic() of the last lookup: idle records are evicted

    @classmethod
    def new(cls, session: Session) -> SessionRecord:
        """A session just created: no turns, no lease, an empty log."""
        return cls(session, TurnBook(), OfferBook(), LeaseBook(), LogBook(0, 0), {})

    @classmethod
    def copied(cls, session: Session, last_seq: int) -> SessionRecord:
        """A session just made from another one's stored log (a fork): no open turn, no lease."""
        return cls(session, TurnBook(), OfferBook(), LeaseBook(), LogBook(last_seq, last_seq), {})

    @classmethod
    def reloaded(cls, loaded: LoadedSession, lease_ttl_s: float) -> SessionRecord:
        """A session rebuilt from the database; a held lease gets a full TTL to be renewed."""
        return cls(
            loaded.session,
            TurnBook.reloaded(loaded.open_turns),
            OfferBook(),
            LeaseBook.reloaded(loaded.lease, loaded.last_worker_seq, lease_ttl_s),
            LogBook(loaded.last_seq, loaded.last_seq, last_event_us=loaded.last_event_us),
            {request.request_id: request for request in loaded.open_requests},
        )

    @property
    def session_id(self) -> str:
        return self.session.session_id
