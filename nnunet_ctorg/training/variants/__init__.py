"""Trainers for the demo and the benchmarks: the demo's short budgets and the reliability benchmark's candidates."""
