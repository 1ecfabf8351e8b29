#!/usr/bin/env python3
"""Uploads one file to a LANVan box the way a careful client does, and times it.

POST /api/uploads, then every chunk as PUT /api/uploads/{id}/chunks/{n} with its SHA-256
in X-Chunk-Sha256, over one keep-alive connection, then POST .../finish.

Efficient on purpose: the file is mmapped (no copies of the bytes in Python), and the
SHA-256 of the next chunks is computed on a helper thread while the current chunk is on
the wire (hashlib and socket sends both release the GIL), so the client's own hashing
overlaps the box's work instead of adding to it.

Prints one JSON line: {"bytes", "seconds", "chunks", "chunk_size", "id", "name",
"client_cpu" (CPU seconds of this process), "finish_seconds" (the finish call alone),
"finish" (the box's answer to it)}.
Exits non-zero on any unexpected reply.
"""

import argparse
import concurrent.futures
import hashlib
import http.client
import json
import mmap
import os
import sys
import time


def fail(msg):
    print(f"upload_client: {msg}", file=sys.stderr)
    sys.exit(1)


def call(conn, method, path, body=None, headers=None, want=(200, 201)):
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status not in want:
        fail(f"{method} {path} -> {resp.status}: {data[:500]!r}")
    return resp.status, (json.loads(data) if data else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--name", required=True, help="name to store the file under")
    ap.add_argument("--lookahead", type=int, default=4, help="chunks hashed ahead")
    ap.add_argument("--connections", type=int, default=1,
                    help="diagnostic: send chunks over this many connections at once "
                         "(chunk i on connection i mod N); run.sh uses 1")
    ap.add_argument("--prehash", action="store_true",
                    help="diagnostic: hash every chunk before the clock starts, to see "
                         "what the box does with a client that costs nothing")
    args = ap.parse_args()

    size = os.path.getsize(args.file)
    f = open(args.file, "rb")
    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    view = memoryview(mm)

    conn = http.client.HTTPConnection(args.host, args.port, timeout=120)
    pre = None
    if args.prehash:
        # The chunk size is known only from the box's answer; the default is asked for
        # with a throwaway upload that is cancelled again.
        _, probe = call(conn, "POST", "/api/uploads",
                        body=json.dumps({"name": args.name + ".probe", "size": size}).encode(),
                        headers={"Content-Type": "application/json"})
        call(conn, "DELETE", f"/api/uploads/{probe['id']}", want=(204,))
        cs = probe["chunk_size"]
        pre = [hashlib.sha256(view[i:i + cs]).hexdigest() for i in range(0, size, cs)]
    t0 = time.perf_counter()
    status, up = call(
        conn, "POST", "/api/uploads",
        body=json.dumps({"name": args.name, "size": size}).encode(),
        headers={"Content-Type": "application/json"},
    )
    if status != 201 or "id" not in up:
        fail(f"expected a new upload (201 with an id), got {status}: {up}")
    uid, chunk_size, chunks = up["id"], up["chunk_size"], up["chunks"]

    def piece(i):
        return view[i * chunk_size:min(size, (i + 1) * chunk_size)]

    def digest(i):
        return hashlib.sha256(piece(i)).hexdigest()

    def send(c, i, hexd):
        body = piece(i)
        call(
            c, "PUT", f"/api/uploads/{uid}/chunks/{i}", body=body,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(len(body)),
                "X-Chunk-Sha256": hexd,
            },
            want=(200,),
        )

    if pre is not None and args.connections == 1:
        for i in range(chunks):
            send(conn, i, pre[i])
    elif args.connections == 1:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            ahead = {}
            for i in range(min(args.lookahead, chunks)):
                ahead[i] = pool.submit(digest, i)
            for i in range(chunks):
                hexd = ahead.pop(i).result()
                nxt = i + args.lookahead
                if nxt < chunks:
                    ahead[nxt] = pool.submit(digest, nxt)
                send(conn, i, hexd)
    else:
        def lane(k):
            c = http.client.HTTPConnection(args.host, args.port, timeout=120)
            for i in range(k, chunks, args.connections):
                send(c, i, pre[i] if pre is not None else digest(i))
            c.close()

        with concurrent.futures.ThreadPoolExecutor(max_workers=args.connections) as pool:
            for f in [pool.submit(lane, k) for k in range(args.connections)]:
                f.result()
    t_finish = time.perf_counter()
    _, done = call(conn, "POST", f"/api/uploads/{uid}/finish", want=(201,))
    seconds = time.perf_counter() - t0
    finish_seconds = time.perf_counter() - t_finish
    conn.close()
    cpu = os.times()
    client_cpu = cpu.user + cpu.system  # this whole process, start-up included
    print(json.dumps({
        "bytes": size, "seconds": seconds, "chunks": chunks, "chunk_size": chunk_size,
        "id": uid, "name": done["file"]["name"], "client_cpu": client_cpu,
        "finish_seconds": finish_seconds,
        "finish": done,
    }))


if __name__ == "__main__":
    main()
