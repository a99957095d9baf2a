"""Streamed chat requests, one after another over one keep-alive connection; the
time of each until its [DONE]. `--split` writes each request's head and body in
two writes with Nagle on, as many clients do; otherwise one write, TCP_NODELAY.

    sse_latency.py HOST PORT MODEL N [--split]
"""
import json
import socket
import sys
import time

host, port, model, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
split = "--split" in sys.argv[5:]
body = json.dumps({"model": model, "stream": True,
                   "messages": [{"role": "user", "content": "Hello, who are you?"}]}).encode()
head = ("POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n").encode()
s = socket.create_connection((host, port))
if not split:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def whole(buf):
    chunked = b"transfer-encoding: chunked" in buf.lower()
    return b"[DONE]" in buf and (not chunked or buf.endswith(b"0\r\n\r\n"))


times = []
for _ in range(n):
    started = time.perf_counter()
    if split:
        s.sendall(head)
        s.sendall(body)
    else:
        s.sendall(head + body)
    buf = b""
    while not whole(buf):
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("the connection closed")
        buf += chunk
    times.append(time.perf_counter() - started)
times.sort()
q = lambda p: times[min(len(times) - 1, int(p * len(times)))] * 1000
print(f"p50 {q(0.5):.2f} ms, p99 {q(0.99):.2f} ms, max {times[-1] * 1000:.1f} ms, "
      f"{sum(1 for t in times if t > 0.02)} of {n} over 20 ms")
