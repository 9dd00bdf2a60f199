"""The scrubber: personal data and secrets out as typed placeholders, and back in on the way home.

`Scrubber` is built once (the recognizers compiled, the operator's denylist among them) and holds
no state, so every request shares it. Each request gets a `Vault`, which numbers what it replaces
per kind in order of first appearance (`<EMAIL_1>`, `<EMAIL_2>`, `<PHONE_1>`) — the same value the
same placeholder across all of the request's texts, so the cloud model can still tell two people
apart and refer back to them — and restores them in the answer. A `Restorer` does that for a
stream, where a placeholder may arrive in pieces.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from routing.privacy.recognizers import PII_TYPES, RECOGNIZERS, Recognizer, denylist_recognizer, findings

PLACEHOLDER = re.compile(r"<[A-Z][A-Z_]*_[0-9]+>")

__all__ = ["PII_TYPES", "PLACEHOLDER", "Restorer", "Scrubber", "Vault"]


class Scrubber:
    """Compiled once per process from the config; thread-safe, stateless."""

    def __init__(self, denylist: Sequence[str] = ()) -> None:
        deny = denylist_recognizer(denylist)
        self._recognizers: tuple[Recognizer, ...] = RECOGNIZERS + ((deny,) if deny else ())

    def vault(self) -> Vault:
        """One per request: placeholders are numbered, and restored, within it alone."""
        return Vault(self._recognizers)


class Vault:
    """One request's placeholders. The same original value gets the same placeholder within a
    vault, across all texts scrubbed with it; numbers count per kind from 1."""

    def __init__(self, recognizers: Sequence[Recognizer]) -> None:
        self._recognizers = recognizers
        self._placeholder: dict[str, str] = {}  # original → placeholder
        self._original: dict[str, str] = {}  # placeholder → original
        self._numbered: dict[str, int] = {}  # KIND → the last number issued (they run 1..n)
        self._label_starts: set[str] = set()  # "", "E", …, "EMAIL_": what may follow a held `<`
        self._labels_seen = 0  # how many kinds _label_starts was built from
        self._counts: dict[str, int] = {}

    def scrub(self, text: str) -> str:
        found = findings(text, self._recognizers) if text else []
        if not found:
            return text
        out: list[str] = []
        at = 0
        for start, end, kind in found:
            out += (text[at:start], self._issue(kind, text[start:end]))
            at = end
        out.append(text[at:])
        return "".join(out)

    def _issue(self, kind: str, value: str) -> str:
        self._counts[kind] = self._counts.get(kind, 0) + 1
        placeholder = self._placeholder.get(value)
        if placeholder is None:
            label = kind.upper()
            number = self._numbered[label] = self._numbered.get(label, 0) + 1
            placeholder = self._placeholder[value] = f"<{label}_{number}>"
            self._original[placeholder] = value
        return placeholder

    @property
    def counts(self) -> dict[str, int]:
        """Replacements made so far, by kind (occurrences, not distinct values)."""
        return dict(self._counts)

    def restore(self, text: str) -> str:
        """Every placeholder this vault issued back to its original; anything else as it was."""
        if not self._original or "<" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self._original.get(m.group(), m.group()), text)

    def could_become(self, tail: str) -> bool:
        """Is `tail` (from a `<`) the start of a placeholder this vault issued, not yet complete?
        Numbers run 1..n per kind, so `<EMAIL_1` can grow into one if n >= 1, `<EMAIL_12` if n >= 12."""
        body = tail[1:]
        if self._labels_seen != len(self._numbered):  # a kind issued since: at most a dozen times
            self._labels_seen = len(self._numbered)
            self._label_starts = {f"{label}_"[:i] for label in self._numbered for i in range(len(label) + 2)}
        if body in self._label_starts:  # `<`, `<EM`, `<API_KEY_`
            return True
        label, _, number = body.rpartition("_")
        issued = self._numbered.get(label, 0)
        if not (issued and number.isascii() and number.isdigit()) or len(number) > len(str(issued)):
            return False
        return number[0] != "0" and int(number) <= issued

    def restorer(self) -> Restorer:
        return Restorer(self)


class Restorer:
    """Streaming restore: feed chunks as they arrive, get back text that is safe to emit now.

    A placeholder holds one `<`, at its start, so the only tail that can still grow into one
    begins at the last `<`; it is held back while it is a proper prefix of an issued placeholder
    (`<EM`, `<EMAIL_`, `<EMAIL_1` — `<EMAIL_10>` may follow) and released as soon as it is not, so
    an ordinary `<` in code goes out at once and the hold never exceeds the longest placeholder.
    Each feed touches the held tail and the new chunk only: O(chunk) amortised."""

    def __init__(self, vault: Vault) -> None:
        self._vault = vault
        self._held = ""

    def feed(self, chunk: str) -> str:
        if self._held:
            text = self._held + chunk
        elif "<" not in chunk:
            return chunk  # the common case: nothing held, nothing to restore or hold
        else:
            text = chunk
        cut = text.rfind("<")
        if cut != -1 and self._vault.could_become(text[cut:]):
            self._held = text[cut:]
            return self._vault.restore(text[:cut])
        self._held = ""
        return self._vault.restore(text)

    def flush(self) -> str:
        """What is held at the end of the stream, unchanged: it never became a placeholder."""
        held, self._held = self._held, ""
        return held
