"""User-facing tools: the framechain command, the launcher, the benchmarks runner."""
