"""benchmarks/peers.py's parts: the tools compared, their measured runs and cache, scans, scores, report, pictures."""
