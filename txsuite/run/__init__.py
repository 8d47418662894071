"""Running cells (L5-L6): the worker runs one cell repetition in its own process (worker.py,
L5); the runner turns a matrix into worker processes, timeouts, resume and records
(runner.py, L6, never imports torch), on this host or a cluster (executors.py)."""
