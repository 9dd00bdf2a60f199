"""The agents' answers as the `reasoning_content` a client shows as thinking: one labelled block
per agent, readable while several agents write at once.

Agents answer in parallel, but interleaved tokens from four writers are unreadable. So one agent
is live — the first to speak — and its text goes out as it arrives; the others' text is held
until the live one is done, then each held block goes out whole, in the order they began, and
the next unfinished one becomes live. Nothing is dropped: an agent that failed or timed out gets
its block with the reason. No I/O: events in, text out (`Lanes` holds one stream's state).
"""

from __future__ import annotations

from routing.council.reports import AgentDone, AgentOpened, CallReport


def heading(role: str, model: str, adapter: str | None) -> str:
    return f"### {role} · {adapter or model}\n\n"


def ending(report: CallReport) -> str:
    if report.status == "ok":
        return "\n\n"
    return f"\n\n*{report.role}: {report.status} — {report.error or 'no answer'}*\n\n"


class Lanes:
    def __init__(self) -> None:
        self._live: str | None = None
        self._blocks: dict[str, list[str]] = {}  # held text per agent, in the order they began
        self._began: set[str] = set()
        self._done: set[str] = set()

    def opened(self, event: AgentOpened) -> str:
        return self._add(event.role, heading(event.role, event.model, event.adapter))

    def text(self, role: str, text: str) -> str:
        return self._add(role, text)

    def done(self, event: AgentDone) -> str:
        role = event.report.role
        out = "" if role in self._began else self._add(role, f"### {role}")  # it never answered
        self._done.add(role)
        out += self._add(role, ending(event.report))
        if role == self._live:
            out += self._next()
        return out

    def _add(self, role: str, text: str) -> str:
        self._began.add(role)
        if self._live is None:
            self._live = role
        if role == self._live:
            return text
        self._blocks.setdefault(role, []).append(text)
        return ""

    def _next(self) -> str:
        """The live agent is done: release the held blocks until one is still being written."""
        self._blocks.pop(self._live or "", None)
        self._live = None
        out: list[str] = []
        for role in list(self._blocks):
            out.extend(self._blocks.pop(role))
            if role not in self._done:
                self._live = role
                break
        return "".join(out)
