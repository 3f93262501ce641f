"""Benchmark harness: TechEmpower database tests against three FastAPI contenders."""
