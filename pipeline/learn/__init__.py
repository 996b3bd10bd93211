"""Stage 2, learning from the cache alone: SCALE aggregators, probes, k-NN, results.

- :mod:`~vcache.learn.aggregator`: SCALE's model (clip transformer with MSK / CLS tokens, SSL heads).
- :mod:`~vcache.learn.losses`: SCALE's losses (MCM, SET) as pure functions.
- :mod:`~vcache.learn.scale`: self-supervised training of an aggregator on a train-mode store; encoding.
- :mod:`~vcache.learn.checkpoints`: stage-2 checkpoints (atomic writes, format checks).
- :mod:`~vcache.learn.heads`: the probes' classifiers and their training loop.
- :mod:`~vcache.learn.probes`: ``vcache probe``: linear, MLP, transformer and k-NN probes, result files.
- :mod:`~vcache.learn.metrics`: top-k and per-family scores, per-video predictions.
- :mod:`~vcache.learn.knn`: DINO-style weighted k-NN and retrieval via FAISS.
- :mod:`~vcache.learn.report`: ``vcache results``, one table of every probe run.
- :mod:`vcache.learn.stica`: STiCA's feature crops, temporal head and loss, trained on cached maps.
"""
