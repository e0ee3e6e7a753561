"""A TCP proxy for the cluster tests: one listening port per target.

    python3 tcpproxy.py HOST:PORT [HOST:PORT ...]

Prints "ports P1 P2 ..." (the loopback ports it listens on, in the order of
the targets) once ready, then forwards bytes both ways until killed. It runs
in its own process so that SIGSTOP on it is a partition: connections stay
open, nothing passes, exactly like a host cut off from the network.
"""
import selectors
import socket
import sys


def main():
    sel = selectors.DefaultSelector()
    ports = []
    for spec in sys.argv[1:]:
        host, port = spec.rsplit(":", 1)
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", 0))
        ls.listen(64)
        ls.setblocking(False)
        sel.register(ls, selectors.EVENT_READ, ("listen", (host, int(port))))
        ports.append(ls.getsockname()[1])
    print("ports " + " ".join(map(str, ports)), flush=True)
    peers = {}

    def close(s):
        for x in (s, peers.pop(s, None)):
            if x is None:
                continue
            peers.pop(x, None)
            try:
                sel.unregister(x)
            except (KeyError, ValueError):
                pass
            x.close()

    while True:
        for key, _ in sel.select():
            kind, arg = key.data
            if kind == "listen":
                try:
                    c, _ = key.fileobj.accept()
                except OSError:
                    continue
                u = socket.socket()
                try:
                    u.connect(arg)
                except OSError:
                    c.close()
                    u.close()
                    continue
                for s in (c, u):
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    s.setblocking(False)
                peers[c], peers[u] = u, c
                sel.register(c, selectors.EVENT_READ, ("pipe", None))
                sel.register(u, selectors.EVENT_READ, ("pipe", None))
                continue
            s = key.fileobj
            if s not in peers:
                continue
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                close(s)
                continue
            try:
                # Loopback buffers are large; a blocking send keeps order.
                peers[s].setblocking(True)
                peers[s].sendall(data)
                peers[s].setblocking(False)
            except OSError:
                close(s)


if __name__ == "__main__":
    main()
