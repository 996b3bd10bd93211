"""k-NN search benchmark: FAISS exact inner product (vcache.learn.knn.search) against scikit-learn
brute force.

Setting (issue 4): 100k train vectors x 768 dims, 2k queries, k = 20, float32, L2-normalised so that inner
product = cosine. scikit-learn: NearestNeighbors(algorithm="brute", metric="cosine"). Both pinned to the same
thread count (faiss.omp_set_num_threads; threadpoolctl for scikit-learn's BLAS and OpenMP). One warm-up call,
then the median of 5 timed calls, index build included for both (each is fitted on the train set per call).
Same results: the share of queries whose 20 neighbour ids agree exactly, and whose top-1 agrees.
Target: FAISS >= 1.5x faster. Writes benchmarks/results/knn.json.

    python benchmarks/bench_knn.py [--train 100000] [--queries 2000] [--dim 768] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import time
from pathlib import Path

import faiss
import numpy as np
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from vcache.learn.knn import search


def timed(fn, repeats: int) -> tuple[float, list[float], object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "knn.json")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    # Clustered data (200 centres) so the neighbour lists mean something and ties are rare.
    centres = rng.standard_normal((200, args.dim)).astype(np.float32)
    train = centres[rng.integers(0, 200, args.train)] + rng.standard_normal(
        (args.train, args.dim), np.float32
    )
    queries = centres[rng.integers(0, 200, args.queries)] + rng.standard_normal(
        (args.queries, args.dim), np.float32
    )
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    faiss.omp_set_num_threads(args.threads)
    t_faiss, faiss_all, (_, idx_f) = timed(
        lambda: search(train, queries, args.k, use_gpu=False), args.repeats
    )

    def sk():
        nn = NearestNeighbors(n_neighbors=args.k, algorithm="brute", metric="cosine", n_jobs=args.threads)
        nn.fit(train)
        return nn.kneighbors(queries, return_distance=True)

    with threadpool_limits(limits=args.threads):
        t_sk, sk_all, (_, idx_s) = timed(sk, args.repeats)

    same_lists = float((idx_f == idx_s).all(axis=1).mean())
    same_sets = float(np.mean([set(a) == set(b) for a, b in zip(idx_f, idx_s, strict=True)]))
    same_top1 = float((idx_f[:, 0] == idx_s[:, 0]).mean())
    result = {
        "setting": {"train": args.train, "queries": args.queries, "dim": args.dim, "k": args.k},
        "threads": args.threads,
        "repeats": args.repeats,
        "faiss_s": t_faiss,
        "sklearn_s": t_sk,
        "faiss_all_s": faiss_all,
        "sklearn_all_s": sk_all,
        "speedup": t_sk / t_faiss,
        "target_speedup": 1.5,
        "same_neighbour_lists": same_lists,
        "same_neighbour_sets": same_sets,
        "same_top1": same_top1,
        "versions": {p: importlib.metadata.version(p) for p in ("faiss-cpu", "scikit-learn", "numpy")},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"faiss {t_faiss:.3f}s  sklearn {t_sk:.3f}s  speedup {t_sk / t_faiss:.2f}x  "
        f"same lists {same_lists:.4f}  same sets {same_sets:.4f}  same top-1 {same_top1:.4f}"
    )


if __name__ == "__main__":
    main()
