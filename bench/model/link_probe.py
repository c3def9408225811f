#!/usr/bin/python3
"""Raw TCP probe of one shaped link, for the cost model (no MPI, no frugal).

Usage: link_probe.py [MIB] (stream size, default 32 MiB).

Run by bench/model/validate through `bench/cluster/run --exec` on P >= 2
namespaces: rank 0 and rank 1 (FRUGAL_RANK) measure, over 10.199.0.1 and
10.199.0.2, the one-way time of a small message (half a ping-pong), the rate
of a one-way stream, and the rate each direction gets when both directions
stream at once; then every other rank streams into rank 0 at once (incast).
Rank 0 prints one line: "probe latency_s one_way_Bps two_way_Bps
incast_Bps" (incast: the aggregate, 0 at P = 2).
"""

import os
import socket
import sys
import threading
import time

PORT = 47980
INCAST_PORT = 47981
STREAM = (int(sys.argv[1]) if len(sys.argv) > 1 else 32) << 20
BLOCK = 1 << 20
PINGS = 200


def address(rank: int) -> str:
    return "10.199.0.%d" % (rank + 1)


def accept(port: int, count: int) -> list[socket.socket]:
    """Rank 0: `count` connections on `port`."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address(0), port))
    server.listen(count)
    conns = [server.accept()[0] for _ in range(count)]
    server.close()
    for conn in conns:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(120)
    return conns


def dial(port: int) -> socket.socket:
    """Any other rank: a connection to rank 0's `port`."""
    for _ in range(600):  # rank 0 may still be probing with rank 1
        try:
            conn = socket.create_connection((address(0), port), timeout=5)
            break
        except OSError:
            time.sleep(0.1)
    else:
        sys.exit("probe: cannot reach rank 0")
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


def incast(rank: int, size: int) -> float:
    """Aggregate bytes per second of ranks 1..P-1 streaming into rank 0."""
    if rank != 0:
        conn = dial(INCAST_PORT)
        receive(conn, 1)
        send(conn, STREAM)
        receive(conn, 1)
        conn.close()
        return 0.0
    conns = accept(INCAST_PORT, size - 1)
    for conn in conns:
        conn.sendall(b"g")
    start = time.perf_counter()
    readers = [threading.Thread(target=receive, args=(c, STREAM))
               for c in conns]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    rate = (size - 1) * STREAM / (time.perf_counter() - start)
    for conn in conns:
        conn.sendall(b"x")
        conn.close()
    return rate


def main() -> None:
    rank = int(os.environ["FRUGAL_RANK"])
    size = int(os.environ["FRUGAL_WORLD_SIZE"])
    if rank <= 1:
        conn = accept(PORT, 1)[0] if rank == 0 else dial(PORT)
        latency = ping_pong(conn, rank)
        one = one_way(conn, rank)
        two = two_way(conn)
        conn.close()
    aggregate = incast(rank, size) if size > 2 else 0.0
    if rank == 0:
        print("probe %.6g %.6g %.6g %.6g" % (latency, one, two, aggregate))


if __name__ == "__main__":
    main()
