#!/usr/bin/env python3
"""Write the fuzzers' seed corpus: tests/fuzz/corpus/<target>/<name>.

    python3 tests/fuzz/make_corpus.py --build build tests/fuzz/corpus
    (or: make fuzz-corpus)

Seeds are small and readable by name: valid streams of each request kind,
text commands, configs and state files, plus a few of each kind of bad
input the daemon must refuse. The fuzzers start from these; what they find
later goes to tests/fuzz/corpus-new/, which is not committed.

The output is deterministic, so regenerating shows up in git only when a
seed really changed. Needs the Python module the build generates from
proto/arbiter.proto (BUILD/gen/python/arbiter_pb2.py).

In the wire harness two helper connections already hold "db" (exclusive)
and "idx" (shared), and helper-2 waits for "db"; their leases are ids 1-4,
so the client's first request that queues or is granted gets lease id 5.
"""
import argparse
import base64
import os
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def frame(req):
    data = req.SerializeToString()
    return struct.pack(">I", len(data)) + data


def wire_seeds(pb):
    n = [0]

    def r(**kind):
        n[0] += 1
        return frame(pb.Request(id=n[0], **kind))

    def hello(name=b"fuzz"):
        n[0] = 0
        return r(hello=pb.Hello(protocol_version=1, client_name=name))

    def acq(res, **kw):
        return r(acquire=pb.Acquire(resource=res, **kw))

    S = {}
    S["hello"] = hello()
    S["hello-no-name"] = frame(pb.Request(id=1, hello=pb.Hello(
        protocol_version=1)))
    S["acquire-free"] = hello() + acq(b"free") + r(
        release=pb.Release(lease_id=5))
    S["acquire-queued-then-granted"] = hello() + acq(b"db")
    S["acquire-queued-position-updates"] = hello() + acq(
        b"db", position_updates=True, lock_delay_ms=10)
    S["acquire-shared-with-helpers"] = hello() + acq(
        b"idx", mode=pb.SHARED) + r(release=pb.Release(request_id=2))
    S["acquire-try-busy"] = hello() + acq(b"db", timeout_ms=0)
    S["acquire-timeout"] = hello() + acq(b"db", timeout_ms=1)
    S["acquire-ttl-renew"] = hello() + acq(b"t", ttl_ms=60000) + r(
        renew=pb.Renew(lease_id=5, ttl_ms=30000)) + r(
        renew=pb.Renew(lease_id=5))
    S["acquire-ttl-over-max"] = hello() + acq(b"t", ttl_ms=2 ** 63)
    S["acquire-twice"] = hello() + acq(b"a") + acq(b"a")
    S["acquire-many"] = hello() + b"".join(
        acq(b"r%d" % i, mode=pb.SHARED if i % 2 else pb.EXCLUSIVE)
        for i in range(40))
    S["acquire-utf8-name"] = hello() + acq("r\u00e9sum\u00e9-\u65e5\u672c"
                                           .encode())
    S["acquire-bad-names"] = hello() + acq(b"") + acq(b"x" * 256) + acq(
        b"a\x00b") + acq(b"\xff\xfe") + acq(b"\xc0\xaf") + acq(b"t\tab")
    S["cancel-queued"] = hello() + acq(b"db") + r(
        release=pb.Release(request_id=2))
    S["release-unknown"] = hello() + r(release=pb.Release(lease_id=999)) + r(
        release=pb.Release(lease_id=1))
    S["release-both-ids"] = hello() + r(release=pb.Release(
        lease_id=1, request_id=1)) + r(release=pb.Release())
    S["release-double"] = hello() + acq(b"d") + r(
        release=pb.Release(lease_id=5)) + r(release=pb.Release(lease_id=5))
    S["renew-unknown"] = hello() + r(renew=pb.Renew(lease_id=77))
    S["ping"] = hello() + r(ping=pb.Ping(payload=b"abc")) + r(ping=pb.Ping())
    S["pipeline-pings"] = hello() + b"".join(
        r(ping=pb.Ping(payload=b"%d" % i)) for i in range(200))
    S["stats"] = hello() + r(stats=pb.StatsRequest()) + r(
        stats=pb.StatsRequest(resource=b"db")) + r(
        stats=pb.StatsRequest(resource=b"none"))
    S["status"] = hello() + acq(b"db") + r(status=pb.StatusRequest()) + r(
        status=pb.StatusRequest(resource=b"idx"))
    S["revoke"] = hello() + r(revoke=pb.Revoke(lease_id=1)) + r(
        revoke=pb.Revoke(pid=1)) + r(revoke=pb.Revoke()) + r(
        revoke=pb.Revoke(lease_id=999))
    S["stats-reset"] = hello() + r(stats_reset=pb.StatsReset()) + r(
        stats=pb.StatsRequest())
    S["before-hello"] = r(ping=pb.Ping())
    S["wrong-version"] = frame(pb.Request(id=1, hello=pb.Hello(
        protocol_version=99)))
    S["second-hello"] = hello() + r(hello=pb.Hello(protocol_version=1))
    S["bad-client-name"] = frame(pb.Request(id=1, hello=pb.Hello(
        protocol_version=1, client_name=b"\x01" * 80)))
    S["no-kind"] = hello() + frame(pb.Request(id=9))
    S["unknown-mode"] = hello() + (lambda body: struct.pack(">I", len(body))
                                   + body)(
        b"\x08\x02\x5a" + bytes([len(b"\x0a\x02db\x10\x07")]) +
        b"\x0a\x02db\x10\x07")
    S["frame-zero-length"] = b"\x00\x00\x00\x00"
    S["frame-too-long"] = b"\x00\xff\xff\xff"
    S["frame-first-byte-1"] = b"\x01\x00\x00\x00hello"
    S["frame-garbage"] = b"\x00\x00\x00\x05hello"
    S["frame-truncated"] = hello() + b"\x00\x00\x00\x40\x08\x02"
    S["server-message-as-request"] = hello() + frame(pb.ServerMessage(
        id=2, pong=pb.Pong(payload=b"x")))
    # A last byte with its top bit set: the client reads nothing until the
    # end, over a small socket buffer, with a 4 KiB output cap.
    S["slow-reader-status"] = hello() + b"".join(
        r(status=pb.StatusRequest()) for _ in range(60)) + b"\x80"
    S["slow-reader-few-pings"] = hello() + r(ping=pb.Ping()) + b"\x80"
    # 40 pongs fill the small socket buffer but not the cap: the daemon's
    # writes block until the reader wakes; 60 reach the cap: dropped.
    for count in (40, 60):
        S["slow-reader-%d-pings" % count] = hello() + b"".join(
            r(ping=pb.Ping(payload=b"p" * 100))
            for _ in range(count)) + b"\x80"
    S["hello-empty-client-name"] = frame(pb.Request(id=1, hello=pb.Hello(
        protocol_version=1, client_name=b""))) + r(status=pb.StatusRequest())
    # Found by fuzzing: an empty client_name reached memchr(NULL, 0, 0),
    # which aborted the daemon under UBSan (fixed in dispatch.c do_hello).
    S["regress-hello-empty-client-name"] = base64.b64decode(
        "AAAADAgBUggIARIAKAAoegAAAAoIAloGCgRmcmVlAAAABggDYgIIBg==")
    return S


def admin_seeds():
    S = {
        "help": b"help\n",
        "ping": b"ping\n",
        "stats": b"stats\n",
        "stats-resource": b"stats db\nstats idx\nstats none\n",
        "status": b"status\n",
        "status-resource": b"status   db  \r\nstatus idx\n",
        "quit": b"ping\nquit\nping\n",
        "unknown": b"bogus command\n\n\nhelp\n",
        "crlf": b"help\r\nstats\r\n",
        "no-newline": b"status",
        "long-line": b"stats " + b"x" * 1100 + b"\n",
        "long-line-no-eol": b"s" * 1100,
        "mixed": b"stats\n\x00\x00\x00\x05hello\n",
        "slow-reader-stats": b"stats\n" * 40 + b"\xff",
    }
    return S


def config_seeds():
    S = {}
    with open(os.path.join(ROOT, "arbiter.conf"), "rb") as f:
        S["reference"] = f.read()
    S["minimal"] = b"[storage]\npath = /tmp/arbiter-fuzz\n"
    S["limits"] = (b"[limits]\nmax_connections = 100\nmax_frame_bytes = 64K\n"
                   b"output_buffer_bytes = 1M\nmax_text_line = 128\n"
                   b"handshake_timeout_ms = 10\n")
    S["access"] = (b"[access]\nallow_uids = 0, 1000,root\n"
                   b"allow_gids = root,0\nadmin_uids = 0\n")
    S["enums"] = (b"[storage]\nhold = on-demand\nlinger_ms = 0\n[log]\n"
                  b"level = debug\nformat = json\n[socket]\nmode = 0600\n"
                  b"group = 0\n")
    S["relative-paths"] = (b"[storage]\npath = data\nlock_file = x.lock\n"
                           b"state_file = ../x.state\n[socket]\npath = s\n")
    S["comments"] = b"; comment\n# comment\n\n[leases]\nmax_ttl_ms = 5 ; x\n"
    S["indented"] = b"[limits]\n  max_connections = 5\n"
    S["unknown-key"] = b"[limits]\nmax_nothing = 1\n"
    S["unknown-section"] = b"[nowhere]\nkey = 1\n"
    S["outside-section"] = b"key = 1\n"
    S["bad-number"] = b"[limits]\nmax_connections = 12abc\n"
    S["out-of-range"] = b"[limits]\nmax_frame_bytes = 17G\n"
    S["bad-mode"] = b"[socket]\nmode = 999\n"
    S["bad-enum"] = b"[storage]\nhold = sometimes\n"
    S["long-line"] = b"[storage]\npath = /" + b"a" * 300 + b"\n"
    S["long-path"] = b"[socket]\npath = /" + b"p" * 150 + b"\n"
    S["syntax-error"] = b"[limits\nmax_connections\n"
    S["delay-over-max"] = (b"[leases]\nlock_delay_ms = 100\n"
                           b"max_lock_delay_ms = 10\n")
    S["nul-byte"] = b"[limits]\nmax_connections = 1\x002\n"
    return S


def http_seeds():
    """Request heads for the metrics port's parser (fuzz_http): what
    scrapers and probes send, and each kind of head it must refuse."""
    get = b"GET /metrics HTTP/1.1\r\nHost: 10.0.0.7:9477\r\n\r\n"
    S = {
        "get-metrics": get,
        "get-healthz": b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        "head": b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        "prometheus": (b"GET /metrics HTTP/1.1\r\nHost: 10.0.0.7:9477\r\n"
                       b"User-Agent: Prometheus/2.45.0\r\nAccept: text/plain;"
                       b"version=0.0.4;q=0.5,*/*;q=0.1\r\nAccept-Encoding: "
                       b"gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n"
                       b"\r\n"),
        "kube-probe": (b"GET /healthz HTTP/1.1\r\nHost: 10.0.0.7:9477\r\n"
                       b"User-Agent: kube-probe/1.29\r\nAccept: */*\r\n"
                       b"Connection: close\r\n\r\n"),
        "http-1.0": b"GET /metrics HTTP/1.0\r\n\r\n",
        "bare-lf": b"GET /metrics HTTP/1.1\nHost: x\n\n",
        "lf-lines-crlf-end": b"GET /healthz HTTP/1.1\nHost: x\n\r\n",
        "empty-lines-first": b"\r\n\nGET /metrics HTTP/1.1\r\n\r\n",
        "query-fragment": b"GET /metrics?a=1&b#f HTTP/1.1\r\n\r\n",
        "absolute-form": b"GET http://h:1/healthz?x HTTP/1.1\r\n\r\n",
        "not-found": b"GET /metrics/ HTTP/1.1\r\n\r\n",
        "body": (b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n"
                 b"Content-Length: 05\r\n\r\nhello"),
        "pipelined": get + b"GET /healthz HTTP/1.1\r\n\r\n",
        "partial": b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
        "post": b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
        "http-2": b"GET /metrics HTTP/2.0\r\n\r\n",
        "bad-request-line": b"GET  /metrics HTTP/1.1 x\r\n\r\n",
        "nul-and-bare-cr": b"GET /met\x00rics HTTP/1.1\rX: \x00\r\n\r\n",
        "folded": b"GET /metrics HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n",
        "space-before-colon": (b"GET /metrics HTTP/1.1\r\nContent-Length : 1"
                               b"\r\n\r\nx"),
        "conflicting-lengths": (b"GET /metrics HTTP/1.1\r\nContent-Length: 0"
                                b"\r\nContent-Length: 5\r\n\r\nhello"),
        "chunked": (b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked"
                    b"\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"),
        "huge-length": (b"HEAD /metrics HTTP/1.1\r\nContent-Length: "
                        b"184467440737095516170\r\n\r\n"),
        "long-head": b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 200 + b"\r\n\r\n",
    }
    return S


def metrics_seeds():
    """The same heads sent to a real metrics listener (fuzz_metrics), and a
    few whose client resets right after sending (a last byte with its top
    bit set)."""
    S = http_seeds()
    get = S["get-metrics"]
    S["reset-after-get"] = get + b"\x80"
    S["reset-mid-head"] = b"GET /metrics HTTP/1.1\r\nX: \xff"
    S["reset-mid-body"] = (b"GET /metrics HTTP/1.1\r\nContent-Length: 9\r\n"
                           b"\r\nabc\xff")
    S["reset-after-refusal"] = b"POST / HTTP/1.1\r\n\r\n\x80"
    return S


def mp(v):
    """Enough of msgpack for state files: maps, str, uint, bin, arrays."""
    if isinstance(v, bool):
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        if v < 0:
            return b"\xd3" + struct.pack(">q", v)
        if v < 128:
            return bytes([v])
        if v < 2 ** 8:
            return b"\xcc" + bytes([v])
        if v < 2 ** 16:
            return b"\xcd" + struct.pack(">H", v)
        if v < 2 ** 32:
            return b"\xce" + struct.pack(">I", v)
        return b"\xcf" + struct.pack(">Q", v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32:
            return bytes([0xa0 | len(b)]) + b
        return b"\xd9" + bytes([len(b)]) + b
    if isinstance(v, bytes):
        return b"\xc4" + bytes([len(v)]) + v
    if isinstance(v, list):
        return bytes([0x90 | len(v)]) + b"".join(mp(x) for x in v)
    if isinstance(v, dict):
        assert len(v) < 16
        return bytes([0x80 | len(v)]) + b"".join(
            mp(k) + mp(x) for k, x in v.items())
    raise TypeError(v)


COUNTERS = ["acquired_immediate", "acquired_after_wait", "failed_timeout",
            "failed_would_block", "failed_forbidden", "failed_invalid",
            "releases", "cancelled", "revoked_disconnect", "revoked_expired",
            "revoked_admin", "revoked_shutdown", "revoked_storage_lost"]


def state_seeds():
    full = {"format": 1, "token_hw": 20000, "written": 1700000000,
            "counters": {c: i * 3 for i, c in enumerate(COUNTERS)},
            "resources": {"db": 19998, "idx": 17}}
    S = {}
    S["valid"] = mp(full)
    S["minimal"] = mp({"format": 1, "token_hw": 0})
    S["big-token"] = mp({"format": 1, "token_hw": 2 ** 64 - 1})
    S["newer-format"] = mp({"format": 2, "token_hw": 5})
    S["newer-format-no-hw"] = mp({"format": 7})
    S["missing-hw"] = mp({"format": 1})
    S["missing-format"] = mp({"token_hw": 1})
    S["format-zero"] = mp({"format": 0, "token_hw": 1})
    S["bad-types"] = mp({"format": "1", "token_hw": -1, "counters": [1]})
    S["counter-types"] = mp({"format": 1, "token_hw": 3, "counters": {
        "releases": "x", 5: 1, "cancelled": 2 ** 40}})
    S["unknown-keys"] = mp({"format": 1, "token_hw": 9, "future": [1, 2],
                            b"bin": True})
    S["duplicate-keys"] = b"\x83" + mp("format") + mp(1) + mp(
        "token_hw") + mp(1) + mp("token_hw") + mp(2)
    S["truncated"] = mp(full)[:-7]
    S["trailing"] = mp(full) + b"\x00"
    S["not-a-map"] = mp([1, 2, 3])
    S["empty-map"] = b"\x80"
    S["huge-map-header"] = b"\xdf\xff\xff\xff\xff"
    S["garbage"] = b"\xc1\xc1\xc1"
    # Found by fuzzing: a map header of ~150 million entries in 13 bytes;
    # msgpack-c asks for gigabytes before reading an element.
    S["regress-map32-150m-entries"] = bytes.fromhex(
        "866f64df08fa00746572696ec3")
    return S


def write(outdir, target, seeds):
    d = os.path.join(outdir, target)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    for name, data in sorted(seeds.items()):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    print("%s: %d seeds" % (d, len(seeds)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("outdir", nargs="?",
                    default=os.path.join(HERE, "corpus"))
    a = ap.parse_args()
    sys.path.insert(0, os.path.join(os.path.abspath(a.build), "gen",
                                    "python"))
    import arbiter_pb2 as pb
    write(a.outdir, "wire", wire_seeds(pb))
    write(a.outdir, "admin", admin_seeds())
    write(a.outdir, "config", config_seeds())
    write(a.outdir, "state", state_seeds())
    write(a.outdir, "http", http_seeds())
    write(a.outdir, "metrics", metrics_seeds())


if __name__ == "__main__":
    main()
