"""Measured performance suite of ``bagpiper_lib``: ``python -m benchmarks [--quick]`` (see README.md).

Each module (``packing``, ``patterns``, ``loss_memory``, ``generation``, ``overhead``,
``codec_throughput``, ``gpu``) exposes ``NAME``, ``SIZES`` and ``run(size) -> list of entries``;
``harness`` holds the timing, entry, machine-record and output code they share.
"""
