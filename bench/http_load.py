"""A bounded load test of the HTTP API on localhost: N concurrent clients for T seconds.

    python bench/http_load.py [--chunks 10000] [--clients 8] [--seconds 30]

Builds (once, cached under the bench cache) an exact index of ``--chunks``
synthetic passages with a checkpoint written by ``colbert_modal.testing``
(no download), starts ``colbert-modal serve`` on a free 127.0.0.1 port with a
token, then runs ``--clients`` threads that POST ``/search`` (k=10) in a loop
for ``--seconds`` (and stop by themselves). Prints throughput, latency
percentiles, errors by status, and the server's RSS before and after (flat
memory: no growth per request). Then the same queries in-process, one
thread, for the comparison. Traffic goes to 127.0.0.1 only. Run it alone.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import CACHE, env

WORDS = ("aardvark bicycle carousel dolphin espresso flamingo glacier harbour igloo jasmine kangaroo lantern meteor "
         "nebula origami penguin quartz rhubarb saffron tornado umbrella volcano walrus xylophone yodel zeppelin "
         "hello information font letters alphabet language nonsense printed meaning background").split()
TOKEN = "bench-token-0123456789"


def prepare(chunks: int) -> tuple[Path, str]:
    """The index root and the index name, built once."""
    from colbert_modal import ColbertIndexer
    from colbert_modal.testing import write_tiny_checkpoint

    base = CACHE / "http-load"
    ckpt, root, name = base / "ckpt", base / "root", f"load{chunks}"
    if not (ckpt / "artifact.metadata").is_file():
        write_tiny_checkpoint(ckpt, extra_words=WORDS)
    idx = ColbertIndexer(name, model=ckpt, index_root=root, backend="exact", progress=False)
    if not idx.store.exists():
        docs = base / f"docs{chunks}"
        docs.mkdir(parents=True, exist_ok=True)
        rng = random.Random(0)
        for i in range(chunks):  # one short file per chunk
            (docs / f"p{i:06d}.txt").write_text(" ".join(rng.choices(WORDS, k=40)) + "\n", encoding="utf-8")
        t0 = time.perf_counter()
        idx.index([docs])
        print(f"built {name}: {idx.info().chunks} chunks in {time.perf_counter() - t0:.0f} s", flush=True)
    return root, name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def main() -> None:
    import httpx

    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    a = ap.parse_args()
    root, name = prepare(a.chunks)
    port = free_port()
    cli = str(Path(sys.executable).parent / "colbert-modal")
    server = subprocess.Popen(
        [cli, "serve", "--index-root", str(root), "--port", str(port), "--token", TOKEN],
        env=env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.5)
        rng = random.Random(1)
        queries = [" ".join(rng.choices(WORDS, k=4)) for _ in range(200)]
        with httpx.Client(timeout=60) as warm:  # load the index and model once
            warm.post(f"{url}/search", json={"index": name, "query": queries[0], "k": 10}, headers=headers)
        rss_before = rss_mb(server.pid)
        latencies: list[float] = []
        errors: dict[str, int] = {}
        lock = threading.Lock()
        stop_at = time.monotonic() + a.seconds

        def client(seed: int) -> None:
            r = random.Random(seed)
            with httpx.Client(timeout=60) as c:
                while time.monotonic() < stop_at:
                    q = r.choice(queries)
                    t0 = time.perf_counter()
                    try:
                        resp = c.post(f"{url}/search", json={"index": name, "query": q, "k": 10}, headers=headers)
                        key = None if resp.status_code == 200 and len(resp.json()["hits"]) == 10 else str(
                            resp.status_code)
                    except httpx.HTTPError as exc:
                        key = type(exc).__name__
                    dt = time.perf_counter() - t0
                    with lock:
                        if key is None:
                            latencies.append(dt)
                        else:
                            errors[key] = errors.get(key, 0) + 1

        samples: list[float] = []

        def sample() -> None:  # the server's RSS every 5 s: a plateau, or growth per request?
            while time.monotonic() < stop_at:
                samples.append(rss_mb(server.pid))
                time.sleep(5)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
        threads.append(threading.Thread(target=sample))
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        rss_after = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    lat = sorted(latencies)
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000  # noqa: E731
    print(f"index {name}; {a.clients} clients for {a.seconds:g} s against 127.0.0.1:{port}")
    print(f"requests ok {len(lat)}, errors {sum(errors.values())} {errors or ''}")
    print(f"throughput {len(lat) / wall:.1f} searches/s; latency p50 {pct(0.5):.0f} ms, p90 {pct(0.9):.0f} ms, "
          f"p99 {pct(0.99):.0f} ms, max {lat[-1] * 1000:.0f} ms")
    print(f"server RSS {rss_before:.0f} MB before the load, {rss_after:.0f} MB after; every 5 s: "
          + ", ".join(f"{m:.0f}" for m in samples))

    from colbert_modal import ColbertIndexer

    idx = ColbertIndexer(name, index_root=root, progress=False)
    idx.search(queries[0])
    times = []
    for q in queries[:50]:
        t1 = time.perf_counter()
        idx.search(q, k=10)
        times.append(time.perf_counter() - t1)
    print(f"in-process, one thread: p50 {statistics.median(times) * 1000:.0f} ms "
          f"({1 / statistics.mean(times):.1f} searches/s)")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
