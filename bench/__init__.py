"""End-to-end benchmarks of the outbox pipeline (``make bench``) and its load test (``make load``)."""
