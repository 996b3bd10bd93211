"""Stage 0, what every stage reads: videos and their decoding, crops, dataset manifests, synthetic data.

- :mod:`~vcache.data.video`: probing and decoding a video (decord; frame counts from the packet index).
- :mod:`~vcache.data.crops`: where the crops of a video lie (train / eval / pairs sampling) and cutting them.
- :mod:`~vcache.data.manifest`: the manifest (videos, labels, class names, provenance) and its checks.
- :mod:`~vcache.data.datasets`: readers of each layout (folder, csv, UCF-101, HMDB-51, Kinetics, SSv2).
- :mod:`~vcache.data.synth`: `vcache synth`, labelled synthetic videos in the UCF-101 layout.
- :mod:`~vcache.data.records`: per-video status and failure reasons, shared by decoders and the store.

Light on purpose: numpy, PyAV and decord only (no torch), so that decoding worker processes start fast.
"""
