"""The metrics port's HTTP/1.x responder, byte for byte: each request a
hostile or an odd client sends, and the answer it must get. The parser's
own cases (every byte boundary, every refusal) are in
tests/unit/test_metrics.c; these check the daemon answers them on the port,
with well-formed replies, and goes on serving."""
import socket

import pytest

import harness
from harness import WAIT, Wire, pb


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    """One daemon for the module, with metrics on a free port."""
    p = free_port()
    d = harness.Daemon(tmp_path_factory.mktemp("metrics"), args=[
        "-o", "metrics.listen=127.0.0.1:%d" % p])
    try:
        yield p
        w = Wire(d.socket, "bystander")
        assert w.call(ping=pb.Ping()).WhichOneof("kind") == "pong"
        w.close()
    finally:
        harness.check_clean_exit(d)


def exchange(port, data, bytewise=False):
    """Send data, then read until the daemon closes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    if bytewise:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            s.sendall(data[i:i + 1])
    else:
        s.sendall(data)
    return harness.read_until_closed(s)


def parse_reply(raw, head_only=False):
    """(status, headers, body) of one whole HTTP/1.1 reply; checks its
    framing: Content-Length is the body's length (no body for HEAD), the
    connection is closed, nothing follows."""
    assert b"\r\n\r\n" in raw, "no whole reply head: %r" % raw[:200]
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode("ascii").split("\r\n")
    version, status, _ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1", lines[0]
    headers = {}
    for line in lines[1:]:
        name, value = line.split(":", 1)
        assert name.lower() not in headers, "repeated header %s" % name
        headers[name.lower()] = value.strip()
    assert headers["connection"] == "close"
    if head_only:
        assert body == b"", "a reply to HEAD carries %d bytes" % len(body)
    else:
        assert int(headers["content-length"]) == len(body), raw[:300]
    return int(status), headers, body


GET = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"

# (request, status): each refused request, and odd ones that are served.
CASES = {
    "served": (GET, 200),
    "healthz": (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    "http-1.0": (b"GET /metrics HTTP/1.0\r\n\r\n", 200),
    "bare-lf": (b"GET /metrics HTTP/1.1\nHost: x\n\n", 200),
    # LF-ended lines closed by a CRLF empty line: the head is whole (it
    # used to wait for more until the timeout).
    "lf-lines-crlf-end": (b"GET /metrics HTTP/1.1\nHost: x\n\r\n", 200),
    "empty-line-first": (b"\r\nGET /metrics HTTP/1.1\r\n\r\n", 200),
    "query": (b"GET /metrics?x=1&y HTTP/1.1\r\n\r\n", 200),
    "absolute-form": (b"GET http://127.0.0.1/metrics HTTP/1.1\r\n\r\n", 200),
    "body-dropped": (b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\n"
                     b"hello", 200),
    "pipelined": (GET + b"GET /nowhere HTTP/1.1\r\n\r\n", 200),
    "not-found": (b"GET /metrics/ HTTP/1.1\r\n\r\n", 404),
    "bad-line": (b"GET /metrics\r\n\r\n", 400),
    "bad-version-junk": (b"GET /metrics HTTP/1.1junk\r\n\r\n", 400),
    "nul-in-path": (b"GET /met\x00rics HTTP/1.1\r\n\r\n", 400),
    "bare-cr": (b"GET /metrics HTTP/1.1\rX: y\r\n\r\n", 400),
    "folded-header": (b"GET /metrics HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 400),
    "space-before-colon": (b"GET /metrics HTTP/1.1\r\nContent-Length : 5"
                           b"\r\n\r\nhello", 400),
    "no-colon": (b"GET /metrics HTTP/1.1\r\nGarbage\r\n\r\n", 400),
    "conflicting-lengths": (b"GET /metrics HTTP/1.1\r\nContent-Length: 0"
                            b"\r\nContent-Length: 5\r\n\r\nhello", 400),
    "bad-length": (b"GET /metrics HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                   400),
    "post": (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
    "chunked": (b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                b"\r\n0\r\n\r\n", 411),
    "huge-length": (b"GET /metrics HTTP/1.1\r\nContent-Length: "
                    b"99999999999999999999999\r\n\r\n", 413),
    "http-2": (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_request_gets_its_status_in_a_well_formed_reply(port, name):
    data, want = CASES[name]
    status, headers, body = parse_reply(exchange(port, data))
    assert status == want, "%s: %d %r" % (name, status, body[:200])
    if want == 200 and b"metrics" in data.split(b"\n")[0]:
        assert body.startswith(b"# HELP arbiter_build_info ")
    if want == 405:
        assert headers["allow"] == "GET, HEAD"
    if want != 200:
        assert body.endswith(b"\n") and len(body.splitlines()) == 1


@pytest.mark.parametrize("name", ["served", "healthz", "lf-lines-crlf-end",
                                  "body-dropped", "absolute-form"])
def test_a_request_sent_one_byte_at_a_time_is_served(port, name):
    data, want = CASES[name]
    status, _, _ = parse_reply(exchange(port, data, bytewise=True))
    assert status == want


@pytest.mark.parametrize("request_, want", [
    (b"HEAD /metrics HTTP/1.1\r\n\r\n", 200),
    (b"HEAD /nowhere HTTP/1.1\r\n\r\n", 404),
    # Refused before the body was looked at: still no body.
    (b"HEAD /metrics HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
    (b"HEAD /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
    (b"HEAD /metrics HTTP/1.1\r\nX\r\n\r\n", 400),
])
def test_a_reply_to_head_has_no_body(port, request_, want):
    status, headers, _ = parse_reply(exchange(port, request_), head_only=True)
    assert status == want
    if want == 200:
        assert int(headers["content-length"]) > 100


def test_a_head_over_the_limit_is_431_without_a_body_for_head(port):
    status, _, _ = parse_reply(
        exchange(port, b"HEAD /metrics HTTP/1.1\r\nX: " + b"a" * 9000),
        head_only=True)
    assert status == 431


def test_a_peer_gone_mid_reply_leaves_the_port_serving(port):
    # Reset right after asking: the daemon's write meets a dead peer. (Fewer
    # than metrics.max_connections, 16: these may not be reaped yet.)
    for _ in range(8):
        s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                     b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.sendall(GET)
        s.close()
    # Half-closed after asking: the reply still comes whole.
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    s.sendall(GET)
    s.shutdown(socket.SHUT_WR)
    assert parse_reply(harness.read_until_closed(s))[0] == 200
    assert parse_reply(exchange(port, GET))[0] == 200
