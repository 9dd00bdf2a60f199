"""The request head is bounded while it is parsed, and every refusal is OpenAI's JSON (a real
server process; raw sockets, so the bytes on the wire are exactly what a hostile client sends)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.servers import Server, run_server

MODELS = {"object": "list", "data": []}
OK = b"GET /v1/models HTTP/1.1\r\nhost: konsilium\r\n\r\n"
OK_CLOSE = b"GET /v1/models HTTP/1.1\r\nhost: konsilium\r\nconnection: close\r\n\r\n"


def error(message: str, code: str) -> dict[str, object]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


TOO_LARGE = "request_header_fields_too_large"
HEADERS_TOO_LARGE = error("The request headers exceed 32768 bytes (max_header_bytes).", TOO_LARGE)
TOO_MANY_HEADERS = error("The request has more than 100 headers (max_headers).", TOO_LARGE)
URI_TOO_LONG = error("The request URL exceeds 8192 bytes (max_url_bytes).", "uri_too_long")
MALFORMED = error("Invalid HTTP request received.", "invalid_request")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(tmp_path_factory.mktemp("limits"), [], memory_budget_mb=100) as running:
        yield running


def port_of(server: Server) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def exchange(server: Server, request: bytes) -> bytes:
    """Send all of `request` (as a client that does not wait would), then read to the server's close."""
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=30) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Every response in `raw` (each with a content-length): status, headers, body."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        length = int(headers["content-length"])
        out.append((int(status_line.split(" ")[1]), headers, rest[:length]))
        raw = rest[length:]
    return out


def whole_responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The responses in `raw` once the last one is complete, else none yet."""
    head, found, rest = raw.partition(b"\r\n\r\n")
    if not found or b"content-length:" not in head.lower():
        return []
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    return responses(raw) if len(rest) >= length else []


def header_lines(count: int, size: int = 1) -> bytes:
    return b"".join(b"x-h-%04d: %s\r\n" % (i, b"v" * size) for i in range(count))


REFUSED = [
    pytest.param(b"GET /v1/models HTTP/1.1\r\nhost: k\r\nx-big: " + b"a" * 2**20 + b"\r\n\r\n", 431, HEADERS_TOO_LARGE,
                 id="one 1 MiB header"),
    pytest.param(b"GET /v1/models HTTP/1.1\r\nhost: k\r\n" + header_lines(2000) + b"\r\n", 431, TOO_MANY_HEADERS,
                 id="2000 headers"),
    pytest.param(b"GET /v1/models HTTP/1.1\r\nhost: k\r\n" + header_lines(40, 1000) + b"\r\n", 431, HEADERS_TOO_LARGE,
                 id="40 KB in 40 headers"),
    pytest.param(b"GET /v1/models?q=" + b"a" * 65536 + b" HTTP/1.1\r\nhost: k\r\n\r\n", 414, URI_TOO_LONG,
                 id="64 KiB URL"),
    pytest.param(b"GET /v1/models?q=" + b"a" * 8200 + b" HTTP/1.1\r\nhost: k\r\n\r\n", 414, URI_TOO_LONG,
                 id="just over 8 KiB URL"),
    pytest.param(b"GARBAGE\r\n\r\n", 400, MALFORMED, id="not HTTP"),
    pytest.param(b"GET /v1/models HTTP/1.1\r\nhost: k\r\nbad header\r\n\r\n", 400, MALFORMED,
                 id="a line without a colon"),
]  # fmt: skip


@pytest.mark.parametrize(("request_bytes", "status", "body"), REFUSED)
def test_an_oversized_or_malformed_head_is_refused_in_openai_shape(
    server: Server, request_bytes: bytes, status: int, body: dict[str, object]
) -> None:
    [(got_status, headers, got_body)] = responses(exchange(server, request_bytes))
    assert (got_status, headers["content-type"], headers["connection"]) == (status, "application/json", "close")
    assert json.loads(got_body) == body
    # the server is unharmed: the next connection is served
    [(next_status, _, next_body)] = responses(exchange(server, OK_CLOSE))
    assert (next_status, json.loads(next_body)) == (200, MODELS)


def test_a_head_within_every_limit_is_served(server: Server) -> None:
    request = b"GET /v1/models?q=" + b"a" * 8000 + b" HTTP/1.1\r\nhost: k\r\n" + header_lines(98, 300)
    [(status, _, body)] = responses(exchange(server, request + b"connection: close\r\n\r\n"))
    assert (status, json.loads(body)) == (200, MODELS)


def test_a_32_mib_header_is_refused_without_being_read_whole(server: Server) -> None:
    request = b"GET /v1/models HTTP/1.1\r\nhost: k\r\nx-big: " + b"a" * 2**25 + b"\r\n\r\n"
    [(status, _, body)] = responses(exchange(server, request))
    assert (status, json.loads(body)) == (431, HEADERS_TOO_LARGE)


def test_a_keep_alive_connection_is_refused_at_its_bad_request(server: Server) -> None:
    """Sent one after the other on one connection: the first answered, the second refused."""
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=30) as sock:
        sock.sendall(OK)
        received = b""
        while not (parsed := whole_responses(received)):  # the first answer may come in pieces
            received += sock.recv(65536)
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: k\r\n" + header_lines(101) + b"\r\n")
        while chunk := sock.recv(65536):
            received += chunk
    [(status, _, body)] = parsed
    assert (status, json.loads(body)) == (200, MODELS)
    [_, (status, _, body)] = responses(received)
    assert (status, json.loads(body)) == (431, TOO_MANY_HEADERS)


def test_a_bad_request_pipelined_after_a_good_one_ends_the_connection_after_its_answer(server: Server) -> None:
    """The first answer is already owed when the second head fails: it goes out whole, marked
    `connection: close`, and nothing is written after it."""
    raw = exchange(server, OK + b"GET /v1/models HTTP/1.1\r\nhost: k\r\n" + header_lines(2000) + b"\r\n")
    [(status, headers, body)] = responses(raw)
    assert (status, headers["connection"], json.loads(body)) == (200, "close", MODELS)


def test_an_sdk_style_client_reads_the_refusal(server: Server) -> None:
    """httpx sends the whole request before it reads: the server drains it and the client gets
    the 431 instead of a connection reset."""
    response = httpx.get(f"{server.v1}/models", headers={"x-big": "a" * 2**20}, timeout=30)
    assert (response.status_code, response.json()) == (431, HEADERS_TOO_LARGE)
    assert response.headers["content-type"] == "application/json"
