"""Prometheus metrics in NVIDIA NIM's vocabulary, aggregated across every router and engine replica."""
