#!/usr/bin/env python3
"""Load test of clip-serve's text search: N concurrent clients, each with its own keep-alive
connection, post text queries (drawn in turn from a texts JSONL) until a request count or a time
limit is reached. Prints one JSON line per concurrency level: p50/p90/p99 latency (ms), requests/s,
errors, and the server's batching counters. Connects to 127.0.0.1 only.

  load_serve.py --port 7860 --texts data/shapes-zh/test_texts.jsonl --clients 1,4,16 --requests 400 --seconds 30
"""
import argparse
import http.client
import json
import statistics
import threading
import time


def percentile(sorted_ms, p):
    if not sorted_ms:
        return float("nan")
    i = min(len(sorted_ms) - 1, max(0, int(round(p / 100.0 * (len(sorted_ms) - 1)))))
    return sorted_ms[i]


def health(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/api/health")
    h = json.loads(c.getresponse().read())
    c.close()
    return h


def run_level(port, texts, clients, max_requests, max_seconds, k):
    lock = threading.Lock()
    issued = [0]
    lat, errors = [], [0]
    deadline = time.monotonic() + max_seconds

    def worker(w):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                if issued[0] >= max_requests or time.monotonic() >= deadline:
                    break
                i = issued[0]
                issued[0] += 1
            body = json.dumps({"text": texts[i % len(texts)], "k": k}, ensure_ascii=False).encode()
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/api/search/text", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                ok = r.status == 200 and json.loads(data)["results"]
            except Exception:
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            ms = (time.perf_counter() - t0) * 1000.0
            with lock:
                if ok:
                    lat.append(ms)
                else:
                    errors[0] += 1
        conn.close()

    before = health(port)["stats"]
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = health(port)["stats"]
    lat.sort()
    q = after["text_queries"] - before["text_queries"]
    b = after["text_batches"] - before["text_batches"]
    return {
        "clients": clients, "requests": len(lat), "errors": errors[0], "seconds": round(wall, 2),
        "rps": round(len(lat) / wall, 1) if wall > 0 else 0.0,
        "p50_ms": round(percentile(lat, 50), 2), "p90_ms": round(percentile(lat, 90), 2),
        "p99_ms": round(percentile(lat, 99), 2), "mean_ms": round(statistics.fmean(lat), 2) if lat else None,
        "mean_batch": round(q / b, 2) if b else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--texts", required=True, help="texts JSONL ({\"text\": ...} per line)")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=400, help="requests per level at most")
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds per level at most")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("-k", type=int, default=10)
    a = ap.parse_args()
    texts = [json.loads(l)["text"] for l in open(a.texts, encoding="utf-8") if l.strip()]
    run_level(a.port, texts, 1, a.warmup, 30.0, a.k)  # first requests pay one-time costs
    h = health(a.port)
    print(json.dumps({"model": h["model"], "store": h["store"]["size"], "dim": h["store"]["dim"]}), flush=True)
    for c in (int(x) for x in a.clients.split(",")):
        print(json.dumps(run_level(a.port, texts, c, a.requests, a.seconds, a.k)), flush=True)


if __name__ == "__main__":
    main()
