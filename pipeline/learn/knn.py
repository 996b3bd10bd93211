"""k-NN classification and retrieval on cached features, with FAISS exact inner-product search.

The classifier is DINO's weighted vote (k = 20, T = 0.07, as SCALE Sec. 4.1 uses): the k nearest train
vectors by cosine similarity s vote for their class with weight exp(s / T). Video vectors follow SCALE's
code: the mean of a video's clip features, minus the train set's mean, L2-normalised.
"""

from __future__ import annotations

import numpy as np

_GPU_RES: dict = {}


def _faiss():
    import faiss  # heavy import, only when searching

    return faiss


def video_vectors(features: np.ndarray, pool: str = "mean") -> np.ndarray:
    """(n, K, D) clip features -> (n, D) per-video vectors pooled over the clips (mean or max)."""
    if pool == "mean":
        return features.mean(axis=1)
    if pool == "max":
        return features.max(axis=1)
    raise ValueError(f"pool must be 'mean' or 'max', not {pool!r}")


def center_normalize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Subtract the train set's mean from both, then L2-normalise every row (float32, C-contiguous)."""
    mu = train.mean(axis=0, keepdims=True)

    def norm(x: np.ndarray) -> np.ndarray:
        x = (x - mu).astype(np.float32)
        return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))

    return norm(train), norm(test)


def search(
    train: np.ndarray, queries: np.ndarray, k: int, use_gpu: bool | None = None, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product (cosine on normalised rows) with a FAISS IndexFlatIP.

    use_gpu None: a GPU index whenever this faiss build sees a GPU. Returns (sims, idx), each (n_q, k).
    """
    faiss = _faiss()
    if threads is not None:
        faiss.omp_set_num_threads(threads)
    train = np.ascontiguousarray(train, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(train))
    index = faiss.IndexFlatIP(train.shape[1])
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu and gpus == 0:  # faiss-cpu beside a CUDA torch: same exact result, on the CPU
        import warnings

        warnings.warn(
            "--device cuda: this faiss build has no GPU support; searching on the CPU", stacklevel=2
        )
    elif (use_gpu is None and gpus > 0) or use_gpu:
        if "gpu" not in _GPU_RES:  # one resource object (its scratch memory) for every search
            _GPU_RES["gpu"] = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(_GPU_RES["gpu"], 0, index)
    index.add(train)
    sims, idx = index.search(queries, k)
    return sims, idx


def weighted_vote(
    sims: np.ndarray, idx: np.ndarray, train_labels: np.ndarray, num_classes: int, temperature: float = 0.07
) -> np.ndarray:
    """DINO's vote: class score = sum over the neighbours of that class of exp(sim / T). Returns (n_q, C)."""
    w = np.exp(sims.astype(np.float64) / temperature)
    scores = np.zeros((len(sims), num_classes))
    rows = np.repeat(np.arange(len(sims)), sims.shape[1])
    np.add.at(scores, (rows, train_labels[idx].reshape(-1)), w.reshape(-1))
    return scores


def knn_classify(
    train: np.ndarray,
    train_labels: np.ndarray,
    test: np.ndarray,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    use_gpu: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted k-NN on already normalised vectors. Returns (scores (n_q, C), sims, neighbour idx)."""
    sims, idx = search(train, test, k, use_gpu=use_gpu)
    return weighted_vote(sims, idx, np.asarray(train_labels), num_classes, temperature), sims, idx


def retrieval_recall(
    train: np.ndarray,
    train_labels: np.ndarray,
    test: np.ndarray,
    test_labels: np.ndarray,
    ks: tuple[int, ...] = (1, 5, 20),
    use_gpu: bool | None = None,
) -> dict[str, float]:
    """Video retrieval as in STiCA / the video-SSL literature: each test video queries the train videos; a
    query scores at k when any of its k nearest train videos has its class. Returns {"R@k": recall}."""
    _, idx = search(train, test, max(ks), use_gpu=use_gpu)
    hit = np.asarray(train_labels)[idx] == np.asarray(test_labels)[:, None]
    return {f"R@{k}": float(hit[:, :k].any(axis=1).mean()) for k in ks}
