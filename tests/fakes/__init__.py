"""Stand-ins for external services (served on loopback), shared by tests and benchmarks."""
