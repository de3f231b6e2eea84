"""Conveyor benchmarks: the peer workloads on any store. Run ``python -m benchmarks``."""
