#!/usr/bin/python3
"""Raw TCP probe of one shaped link, for the cost model (no MPI, no frugal).

Usage: link_probe.py [MIB] (stream size, default 32 MiB).

Run by bench/model/validate through `bench/cluster/run --exec` on two
namespaces: rank 0 and rank 1 (FRUGAL_RANK) measure, over 10.199.0.1 and
10.199.0.2, the one-way time of a small message (half a ping-pong), the rate
of a one-way stream, and the rate each direction gets when both directions
stream at once. Rank 0 prints one line: "probe latency_s one_way_Bps
two_way_Bps".
"""

import os
import socket
import sys
import threading
import time

PORT = 47980
STREAM = (int(sys.argv[1]) if len(sys.argv) > 1 else 32) << 20
BLOCK = 1 << 20
PINGS = 200


def address(rank: int) -> str:
    return "10.199.0.%d" % (rank + 1)


def connect(rank: int) -> socket.socket:
    """A TCP connection between rank 0 (listening) and rank 1."""
    if rank == 0:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((address(0), PORT))
        server.listen(1)
        conn, _ = server.accept()
        server.close()
    else:
        for _ in range(100):
            try:
                conn = socket.create_connection((address(0), PORT), timeout=5)
                break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit("probe: rank 1 cannot reach rank 0")
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.settimeout(120)
    return conn


def receive(conn: socket.socket, count: int) -> None:
    while count > 0:
        data = conn.recv(min(count, BLOCK))
        if not data:
            sys.exit("probe: connection closed early")
        count -= len(data)


def send(conn: socket.socket, count: int) -> None:
    block = bytes(BLOCK)
    while count > 0:
        conn.sendall(block[:min(count, BLOCK)])
        count -= min(count, BLOCK)


def ping_pong(conn: socket.socket, rank: int) -> float:
    """Half the median round trip of a one-byte message."""
    times = []
    for _ in range(PINGS):
        start = time.perf_counter()
        if rank == 0:
            conn.sendall(b"x")
            receive(conn, 1)
        else:
            receive(conn, 1)
            conn.sendall(b"x")
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] / 2


def one_way(conn: socket.socket, rank: int) -> float:
    """Bytes per second of rank 0 streaming to rank 1, timed to the reply."""
    start = time.perf_counter()
    if rank == 0:
        send(conn, STREAM)
        receive(conn, 1)
    else:
        receive(conn, STREAM)
        conn.sendall(b"x")
    return STREAM / (time.perf_counter() - start)


def two_way(conn: socket.socket) -> float:
    """Bytes per second in each direction while both stream at once."""
    start = time.perf_counter()
    sender = threading.Thread(target=send, args=(conn, STREAM))
    sender.start()
    receive(conn, STREAM)
    sender.join()
    return STREAM / (time.perf_counter() - start)


def main() -> None:
    rank = int(os.environ["FRUGAL_RANK"])
    if rank > 1:
        return
    conn = connect(rank)
    latency = ping_pong(conn, rank)
    one = one_way(conn, rank)
    two = two_way(conn)
    if rank == 0:
        print("probe %.6g %.6g %.6g" % (latency, one, two))
    conn.close()


if __name__ == "__main__":
    main()
