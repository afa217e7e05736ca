"""One keep-alive HTTP load loop for the benches that compare a path with another (relay, up).

Run with `python -c LOAD_SCRIPT <ip> <port> <seconds> <path>` inside a network
namespace: one connection, GETs back to back, prints requests per second. A
script, not a function, because it runs in the namespace's own interpreter.
"""

LOAD_SCRIPT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
req = b"GET " + sys.argv[4].encode() + b" HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"
n, end = 0, time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    s.sendall(req)
    data = b""
    while b"\\r\\n\\r\\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\\r\\n\\r\\n")
    length = int([h.split(b":")[1] for h in head.split(b"\\r\\n") if h.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += s.recv(65536)
    n += 1
print(n / float(sys.argv[3]))
"""
