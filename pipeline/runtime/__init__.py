"""What every stage shares about where it runs: the device rule and the distributed plumbing.

- :mod:`~vcache.runtime.devices`: one rule from ``--device`` and torchrun's LOCAL_RANK to a torch device.
- :mod:`~vcache.runtime.distributed`: the process group, collectives that carry gradients, synchronised BN.
"""
