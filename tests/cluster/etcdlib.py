"""Test bed for cluster mode: a real 3-member etcd on loopback.

Members run Debian's etcd (/usr/bin/etcd) under `nice -n 5`, with their
data on tmpfs (/dev/shm when it is writable, so fsync costs nothing and the
disk is left alone), on free loopback ports. Readiness is read from each
member's own log line ("serving client traffic") and then from
GET /health, never guessed with a sleep. Every process started here is
registered and stopped by Cluster.stop(), which the fixtures call.

Helpers: kill -9 / SIGSTOP / SIGCONT a member, find the leader, a TCP proxy
per host that can be paused (SIGSTOP the proxy = a partition of that host),
and a short-lived self-signed CA for a TLS member.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ETCD = os.environ.get("ETCD", "/usr/bin/etcd")
HERE = os.path.dirname(os.path.abspath(__file__))
WAIT = 30


def have_etcd():
    return os.access(ETCD, os.X_OK)


def free_ports(n):
    """n distinct free loopback ports (bound together, then released)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def tmpfs_dir(prefix):
    """A private folder on tmpfs when there is one, else in the temp dir."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix=prefix, dir=base)


class Lines:
    """Collect a pipe's lines on a thread; wait_for blocks on a condition."""

    def __init__(self, f, keep=None):
        self.f = f
        self.keep = keep
        self.lines = []
        self.eof = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        for raw in iter(self.f.readline, b""):
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                # A member's log, bounded: a long run keeps the recent lines.
                if self.keep and len(self.lines) > self.keep:
                    del self.lines[:self.keep // 5]
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait_for(self, needle, timeout=WAIT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for l in self.lines:
                    if needle in l:
                        return l
                if self.eof:
                    raise RuntimeError("process ended without %r:\n%s" %
                                       (needle, "\n".join(self.lines[-20:])))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no %r within %ss:\n%s" % (
                        needle, timeout, "\n".join(self.lines[-20:])))
                self.cond.wait(left)

    def tail(self, n=20):
        with self.cond:
            return "\n".join(self.lines[-n:])


def http(url, body=None, timeout=2.0, ctx=None):
    """GET (body None) or POST JSON; returns the decoded JSON reply."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if data is None
                                 else "POST")
    with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
        return json.loads(r.read().decode())


class Member:
    def __init__(self, cluster, i, client_port, peer_port, tls=None):
        self.cluster = cluster
        self.name = "m%d" % i
        self.client_port = client_port
        self.peer_port = peer_port
        self.tls = tls
        scheme = "https" if tls else "http"
        self.url = "%s://127.0.0.1:%d" % (scheme, client_port)
        self.peer_url = "http://127.0.0.1:%d" % peer_port
        self.data = os.path.join(cluster.dir, self.name)
        self.proc = None
        self.log = None
        self.stopped = False

    def start(self, state="new"):
        c = self.cluster
        cmd = ["nice", "-n", "5", ETCD, "--name", self.name,
               "--data-dir", self.data,
               "--listen-client-urls", self.url,
               "--advertise-client-urls", self.url,
               "--listen-peer-urls", self.peer_url,
               "--initial-advertise-peer-urls", self.peer_url,
               "--initial-cluster", c.initial_cluster(),
               "--initial-cluster-state", state,
               "--initial-cluster-token", c.token,
               "--heartbeat-interval", "100",
               "--election-timeout", str(c.election_ms),
               "--enable-v2=false", "--logger", "zap",
               "--log-outputs", "stderr", "--log-level", "info"]
        if self.tls:
            cmd += ["--cert-file", self.tls.server_crt,
                    "--key-file", self.tls.server_key,
                    "--trusted-ca-file", self.tls.ca_crt,
                    "--client-cert-auth"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.log = Lines(self.proc.stderr, keep=5000)
        self.stopped = False

    def wait_ready(self, timeout=WAIT):
        self.log.wait_for("serving client traffic", timeout)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def sigstop(self):
        self.proc.send_signal(signal.SIGSTOP)
        self.stopped = True

    def sigcont(self):
        self.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    def status(self, timeout=1.0):
        """The member's own maintenance status (member_id, leader)."""
        return http(self.url + "/v3/maintenance/status", {}, timeout,
                    self.tls.client_ctx() if self.tls else None)

    def stop(self):
        if self.proc is None:
            return
        if self.stopped:
            self.sigcont()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.thread.join(5)


class Cluster:
    """n etcd members on loopback; stop() stops them and removes the data."""

    def __init__(self, n=3, election_ms=1000, tls=None):
        self.dir = tmpfs_dir("arbiter-etcd-")
        self.token = "arbiter-test-%d" % os.getpid()
        self.election_ms = election_ms
        ports = free_ports(2 * n)
        self.members = [Member(self, i, ports[2 * i], ports[2 * i + 1], tls)
                        for i in range(n)]
        self.proxies = []
        # Even if a test run is cut short, no member outlives it.
        import atexit
        atexit.register(self.stop)

    def initial_cluster(self):
        return ",".join("%s=%s" % (m.name, m.peer_url) for m in self.members)

    def endpoints(self):
        return ",".join(m.url for m in self.members)

    def start(self):
        try:
            for m in self.members:
                m.start()
            for m in self.members:
                m.wait_ready()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, timeout=WAIT):
        """Until some live member answers GET /health with true.

        Each try blocks on the member's answer (etcd itself waits for a
        leader for a while before answering false), so this never spins.
        """
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for m in self.members:
                if not m.alive() or m.stopped:
                    continue
                try:
                    ctx = m.tls.client_ctx() if m.tls else None
                    h = http(m.url + "/health", None, 3.0, ctx)
                    if h.get("health") in (True, "true"):
                        return m
                    last = h
                    # Unhealthy right now: wait for this member's next log
                    # line (an election, a new leader), bounded.
                    n = len(m.log.lines)
                    with m.log.cond:
                        m.log.cond.wait_for(lambda: len(m.log.lines) > n,
                                            timeout=0.5)
                except OSError as e:
                    last = e
        raise TimeoutError("etcd not healthy within %ss: %s" % (timeout, last))

    def leader(self, timeout=WAIT):
        """The member that is leader now, as the live members report it."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.members:
                if not m.alive() or m.stopped:
                    continue
                try:
                    st = m.status()
                except OSError:
                    continue
                lead = st.get("leader")
                if lead and lead != "0":
                    for x in self.members:
                        if x.alive() and not x.stopped:
                            try:
                                if x.status()["header"]["member_id"] == lead:
                                    return x
                            except OSError:
                                pass
            if time.monotonic() > deadline:
                raise TimeoutError("no etcd leader within %ss" % timeout)
            self.wait_healthy(max(1, deadline - time.monotonic()))

    def followers(self):
        lead = self.leader()
        return [m for m in self.members if m is not lead]

    def member_by_url(self, url):
        for m in self.members:
            if m.url == url:
                return m
        raise KeyError(url)

    def proxy(self):
        """A TCP proxy in front of every member (one per host)."""
        p = Proxy([("127.0.0.1", m.client_port) for m in self.members])
        self.proxies.append(p)
        return p

    def stop(self):
        for p in self.proxies:
            p.stop()
        for m in self.members:
            m.stop()
        shutil.rmtree(self.dir, True)


class Proxy:
    """tcpproxy.py in its own process: SIGSTOP it to partition its host."""

    def __init__(self, targets):
        spec = ["%s:%d" % t for t in targets]
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "tcpproxy.py")] + spec,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            start_new_session=True)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("ports "):
            self.stop()
            raise RuntimeError("tcpproxy did not start: %r" % line)
        self.ports = [int(x) for x in line.split()[1:]]
        self.stopped = False

    def endpoints(self, scheme="http"):
        return ",".join("%s://127.0.0.1:%d" % (scheme, p) for p in self.ports)

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)
        self.stopped = True

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    def stop(self):
        if self.proc.poll() is None:
            if self.stopped:
                self.resume()
            self.proc.kill()
            self.proc.wait()


class TLS:
    """A self-signed CA, a server certificate for 127.0.0.1 and a client one."""

    def __init__(self, folder):
        self.dir = folder
        p = lambda n: os.path.join(folder, n)  # noqa: E731
        self.ca_crt, self.ca_key = p("ca.crt"), p("ca.key")
        self.server_crt, self.server_key = p("server.crt"), p("server.key")
        self.client_crt, self.client_key = p("client.crt"), p("client.key")
        ext = p("san.ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                    "extendedKeyUsage=serverAuth,clientAuth\n")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
              "-nodes"]
        run = lambda *a: subprocess.run(  # noqa: E731
            ["openssl"] + list(a), check=True, capture_output=True)
        run("req", "-x509", *ec, "-keyout", self.ca_key, "-out", self.ca_crt,
            "-days", "2", "-subj", "/CN=arbiter test CA")
        for name, crt, key in (("localhost", self.server_crt, self.server_key),
                               ("arbiter-client", self.client_crt,
                                self.client_key)):
            csr = crt + ".csr"
            run("req", *ec, "-keyout", key, "-out", csr, "-subj",
                "/CN=" + name)
            run("x509", "-req", "-in", csr, "-CA", self.ca_crt, "-CAkey",
                self.ca_key, "-CAcreateserial", "-out", crt, "-days", "2",
                "-extfile", ext)

    def client_ctx(self):
        import ssl
        ctx = ssl.create_default_context(cafile=self.ca_crt)
        ctx.load_cert_chain(self.client_crt, self.client_key)
        return ctx
