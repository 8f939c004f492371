"""Benchmarks: `sdlab bench runtime` (GPU or CPU smoke), cold start, HTTP bursts."""
