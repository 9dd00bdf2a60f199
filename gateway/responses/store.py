"""Stored responses (`store: true`), so a follow-up can name one as its `previous_response_id`.

Bounded three ways: a count, the bytes held (each entry's encoded response and conversation)
and an age. The least recently used entry goes first when a bound is reached; an expired one is
gone when next looked at (and swept as new ones come in). Entries belong to the key that made
them: another key's id is as unknown as one never made. In memory, per replica: a follow-up
that reaches another replica finds nothing (a 400 naming `previous_response_id`).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway import protocol as p
from gateway.responses import protocol as r
from model_store.types import Message

Owner = str  # the API key's name; "" without keys


@dataclass(frozen=True)
class Stored:
    response: bytes  # the response object, encoded once
    conversation: tuple[Message, ...]  # what a follow-up continues: input and output, no instructions
    size: int
    expires: float


class ResponseStore:
    def __init__(self, *, max_items: int, max_bytes: int, ttl_s: float, clock: Callable[[], float]) -> None:
        self.max_items, self.max_bytes, self.ttl_s = max_items, max_bytes, ttl_s
        self._clock = clock
        self._entries: OrderedDict[tuple[Owner, str], Stored] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, owner: Owner, response: r.Response, conversation: tuple[Message, ...]) -> None:
        encoded = p.encoder.encode(response)
        size = len(encoded) + sum(len(p.encoder.encode(m)) for m in conversation)
        if size > self.max_bytes or self.max_items == 0:
            return  # larger than the whole store: kept nowhere rather than emptying it
        key = (owner, response.id)
        self._drop(key)
        now = self._clock()
        self._entries[key] = Stored(encoded, conversation, size, now + self.ttl_s)
        self.bytes += size
        self._sweep(now)
        while len(self._entries) > self.max_items or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def get(self, owner: Owner, response_id: str) -> Stored | None:
        key = (owner, response_id)
        stored = self._entries.get(key)
        if stored is None:
            return None
        if stored.expires <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return stored

    def delete(self, owner: Owner, response_id: str) -> bool:
        found = self.get(owner, response_id) is not None
        self._drop((owner, response_id))
        return found

    def _drop(self, key: tuple[Owner, str]) -> None:
        stored = self._entries.pop(key, None)
        if stored is not None:
            self.bytes -= stored.size

    def _sweep(self, now: float) -> None:
        """Entries expire in insertion order only roughly (a read moves one to the end): look at
        the oldest few, enough to keep pace with puts."""
        for key in list(itertools.islice(self._entries, 2)):
            if self._entries[key].expires <= now:
                self._drop(key)
