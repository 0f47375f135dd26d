"""Latency and throughput benchmarks, in-process and over gRPC. Never imports torch."""
