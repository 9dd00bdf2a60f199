"""`konsilium run` as a person uses it: a conversation in a real pseudo-terminal against the real
SmolLM2, one prompt with the server it starts (and stops) itself, and a refusal in words."""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import sys
import time

import pytest

from tests.servers import MODEL_ID, ROOT, Server, pid_alive

pytestmark = pytest.mark.e2e
RUN = [sys.executable, "-m", "entrypoints.cli", "run"]
# an answer cut short says so (`· finish length`): SmolLM2 ends "Say hello." by itself on some CPUs only
STATUS = re.compile(
    rf"\x1b\[2m{re.escape(MODEL_ID)} · role \w+ · route \S+ · \d+ tokens(?: · finish length)? · [\d.]+ s\x1b\[0m"
)


class Terminal:
    """A process on the slave side of a pseudo-terminal; what it wrote, read from the master."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = os.openpty()
        self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, close_fds=True)
        os.close(slave)
        self.screen = ""

    def read_until(self, marker: str, timeout_s: float = 120) -> str:
        """Everything written from the last marker up to and including the next `marker`."""
        start, deadline = len(self.screen), time.monotonic() + timeout_s
        while marker not in self.screen[start:]:
            assert time.monotonic() < deadline, f"no {marker!r} after {timeout_s} s: {self.screen[start:]!r}"
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                self.screen += os.read(self.master, 4096).decode("utf-8", errors="replace")
        end = self.screen.index(marker, start) + len(marker)
        return self.screen[start:end]

    def type(self, line: str) -> None:
        os.write(self.master, f"{line}\n".encode())

    def close(self) -> int:
        try:
            return self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            os.close(self.master)


def test_a_conversation_in_a_terminal_streams_answers_and_says_who_answered(server: Server) -> None:
    terminal = Terminal([*RUN, MODEL_ID, "--url", server.base_url])
    try:
        banner = terminal.read_until(">>> ")
        assert f"{MODEL_ID} at {server.base_url} — /bye to leave, /clear to forget the conversation" in banner
        terminal.type("Say hello.")
        turn = terminal.read_until(">>> ")
        answer, status = turn.split("\x1b[2m")[0], "\x1b[2m" + turn.split("\x1b[2m")[1]
        assert answer.startswith("Say hello.\r\n")  # the terminal's echo of what was typed
        assert answer.removeprefix("Say hello.\r\n").strip(), "an answer was written"
        assert STATUS.search(status), status
        terminal.type("What did I ask you to say?")  # the conversation is kept: a second turn
        assert STATUS.search(terminal.read_until(">>> "))
        terminal.type("/bye")
    finally:
        code = terminal.close()
    assert code == 0


def test_one_prompt_starts_its_own_server_and_stops_it() -> None:
    with socket.socket() as probe:  # the default address must be free, or run would use it
        if probe.connect_ex(("127.0.0.1", 8400)) == 0:
            pytest.skip("something listens on 127.0.0.1:8400")
    done = subprocess.run([*RUN, MODEL_ID, "Say hello."], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "the answer is on stdout"
    started = re.search(r"starting Konsilium \(pid (\d+)\) on 127\.0\.0\.1:(\d+) \.\.\.", done.stderr)
    assert started, done.stderr
    assert re.search(
        rf"\[{re.escape(MODEL_ID)} · role \w+ · route \S+ · \d+ tokens(?: · finish length)? · [\d.]+ s\]", done.stderr
    )
    pid, port = int(started.group(1)), int(started.group(2))
    assert not pid_alive(pid), "the server it started is stopped"
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_an_unknown_model_is_said_in_words(server: Server) -> None:
    done = subprocess.run(
        [*RUN, "no-such-model", "Hi", "--url", server.base_url], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("konsilium run: 404: ")
    assert "no-such-model" in done.stderr
