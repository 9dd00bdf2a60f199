"""What the store tells its caller while a request waits, between the backend's events."""

from __future__ import annotations

import msgspec

from model_store.types import Event


class Notice(msgspec.Struct, frozen=True):
    """Not a backend event: what the store tells its caller while the request waits."""

    model: str


class Queued(Notice, frozen=True):
    """Every slot of the model is taken: the request waits its turn (bounded by `max_queue`)."""


class Admitted(Notice, frozen=True):
    """After `Queued`: the request holds a slot now; the model starts on it from here."""


class Loading(Notice, frozen=True):
    """The model is being loaded for this request (SSE heartbeat time)."""


StoreEvent = Event | Notice
