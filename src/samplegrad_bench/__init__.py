"""samplegrad_bench: the benchmark harness of samplegrad (problems, runners, the CLI).

It imports the library ``samplegrad``; the library never imports it. Its own dependencies
(matplotlib, scikit-learn, peers) come with the ``[bench]`` extra.
"""
