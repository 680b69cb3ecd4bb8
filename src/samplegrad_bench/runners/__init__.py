"""Benchmark runners reachable as ``samplegrad bench NAME`` (one module per name).

Each module defines ``add_arguments(parser)`` (optional) and ``run(args) -> dict``.
``args`` always carries ``quick`` (bool), ``out`` (Path, created), ``seed`` (int).
"""
