"""Runners reachable as ``samplegrad bench NAME``, ``samplegrad demo`` and ``samplegrad train-*``.

Each module defines ``add_arguments(parser)`` (optional) and ``run(args) -> dict``. ``args``
always carries ``quick`` (bool), ``out`` (the output folder, created: ``runs/NAME``, ``--out``
or, with ``--publish``, ``docs/results/NAME``), ``publish`` (bool) and ``threads`` (int or
None), plus ``seed`` (int) unless the runner takes ``--seeds`` (a comma list) itself. Runners
write their files directly into ``args.out`` and their caches under
:func:`samplegrad_bench.paths.cache_dir`.
"""
