"""Benchmarks: each writes bench/results/<name>.json; `python -m bench.report` tabulates them."""
