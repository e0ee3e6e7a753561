"""Handover: a client that hands its connection to a child names it, and
status shows the child as the holder beside the pid the kernel gave for
the connection. arbiterctl run hands its lease to CMD before CMD runs."""
import json
import subprocess
import re

import harness
from harness import Wire, pb

# CMD prints its own pid (exec keeps it), then holds the lease.
HOLD = ["sh", "-c", "echo $$; exec sleep 600"]


def start_holder(daemon, procs):
    p = daemon.ctl_bg("run", "-x", "db", "--", *HOLD)
    procs.append(p)
    line = p.out.wait_for("")
    return p, int(line)


def holder_of(daemon, resource="db"):
    r = daemon.ctl("status", "--json", check=True)
    hs = json.loads(r.stdout)["resources"][resource]["holders"]
    assert len(hs) == 1, hs
    return hs[0]


def test_status_shows_the_command_of_run_as_the_holder(daemon, procs):
    p, cmd_pid = start_holder(daemon, procs)
    assert cmd_pid != p.pid
    h = holder_of(daemon)
    # The kernel's pid is arbiterctl's; the one it named is CMD's.
    assert h["pid"] == p.pid
    assert h["handed_to_pid"] == cmd_pid
    out = daemon.ctl("status", check=True).stdout
    row = [l for l in out.splitlines() if l.startswith("db ")]
    assert len(row) == 1, out
    assert re.search(r"\bholds\s+exclusive\s+%d\s+\d+\s+arbiterctl:sh via %d\b"
                     % (cmd_pid, p.pid), row[0]), row[0]
    who = daemon.ctl("who", check=True).stdout
    assert "db: pid %d (arbiterctl:sh via %d), exclusive" % (
        cmd_pid, p.pid) in who, who


def test_revoke_by_the_commands_pid_ends_its_lease(daemon, procs):
    p, cmd_pid = start_holder(daemon, procs)
    r = daemon.ctl("revoke", "--pid", str(cmd_pid), check=True)
    assert "1" in r.stdout, r.stdout
    assert p.wait(harness.WAIT) == 75


def test_handover_on_the_wire_shows_and_withdraws(daemon):
    w = Wire(daemon.socket, "handing")
    assert w.welcome.handover
    w.lock("db")
    m = w.call(handover=pb.Handover(pid=4242))
    assert m.WhichOneof("kind") == "handed_over" and m.handed_over.pid == 4242
    h = holder_of(daemon)
    assert h["handed_to_pid"] == 4242
    m = w.call(handover=pb.Handover(pid=0))
    assert m.WhichOneof("kind") == "handed_over"
    h = holder_of(daemon)
    assert h["handed_to_pid"] == 0
    # Revoke by pid 0 is refused, and never matches "no handover".
    r = daemon.ctl("revoke", "--pid", "0")
    assert r.returncode != 0
    assert holder_of(daemon)["lease_id"] > 0
    w.close()


def test_a_waiter_that_handed_over_shows_it(daemon):
    a = Wire(daemon.socket, "a")
    a.lock("db")
    b = Wire(daemon.socket, "b")
    b.call(handover=pb.Handover(pid=777))
    b.acquire("db")
    b.wait_kind("queued")
    r = daemon.ctl("status", "--json", check=True)
    ws = json.loads(r.stdout)["resources"]["db"]["waiters"]
    assert [w["handed_to_pid"] for w in ws] == [777]
    a.close()
    b.close()


def test_a_busy_answer_names_the_command(daemon, procs):
    p, cmd_pid = start_holder(daemon, procs)
    r = daemon.ctl("run", "-n", "db", "--", "true")
    assert r.returncode == 1
    assert "held exclusive by pid %d (arbiterctl:sh via %d)" % (
        cmd_pid, p.pid) in r.stderr, r.stderr


def test_the_text_protocol_shows_the_handed_to_pid(daemon, procs):
    p, cmd_pid = start_holder(daemon, procs)
    w = Wire(daemon.socket, "waiter")
    w.call(handover=pb.Handover(pid=31))
    w.acquire("db")
    w.wait_kind("queued")
    text = daemon.text(["status db"])
    assert re.search(r"\nholder:lease=\d+ mode=exclusive pid=%d .* "
                     r"handed_to_pid=%d\n" % (p.pid, cmd_pid), text), text
    assert re.search(r"\nwaiter:position=1 .* handed_to_pid=31\n", text), text
    w.close()


def serve_as_an_older_daemon(path, seen):
    """A daemon from before Handover, on one connection: Hello, Acquire and
    Release are answered; any other kind gets BAD_REQUEST and the
    connection is closed, as such a daemon does. Its Welcome has no
    handover flag."""
    import socket
    import struct
    import threading

    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    ls.listen(1)

    def read_exact(s, n):
        b = b""
        while len(b) < n:
            chunk = s.recv(n - len(b))
            if not chunk:
                return None
            b += chunk
        return b

    def send(s, m):
        data = m.SerializeToString()
        s.sendall(struct.pack(">I", len(data)) + data)

    def run():
        s, _ = ls.accept()
        with s:
            while True:
                head = read_exact(s, 4)
                if head is None:
                    return
                req = pb.Request.FromString(
                    read_exact(s, struct.unpack(">I", head)[0]))
                kind = req.WhichOneof("kind")
                seen.append(kind)
                if kind == "hello":
                    send(s, pb.ServerMessage(id=req.id, welcome=pb.Welcome(
                        protocol_version=1, server_version="0.0.9",
                        connection_id=1, role="active")))
                elif kind == "acquire":
                    send(s, pb.ServerMessage(id=req.id, granted=pb.Granted(
                        lease_id=1, token=1, resource="db")))
                elif kind == "release":
                    send(s, pb.ServerMessage(id=req.id,
                                             released=pb.Released(lease_id=1)))
                else:
                    send(s, pb.ServerMessage(id=req.id, error=pb.Error(
                        code=pb.BAD_REQUEST, message="no known kind")))
                    return

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return ls, t


def test_run_sends_no_handover_to_an_older_daemon(tmp_path):
    path = str(tmp_path / "old.sock")
    seen = []
    ls, t = serve_as_an_older_daemon(path, seen)
    try:
        r = subprocess.run([harness.ARBITERCTL, "-S", path, "run", "db", "--",
                            "sh", "-c", "echo ran"], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True,
                           timeout=harness.WAIT)
        t.join(harness.WAIT)
    finally:
        ls.close()
    assert r.returncode == 0 and r.stdout == "ran\n", (r.returncode, r.stderr)
    assert seen == ["hello", "acquire", "release"], seen
