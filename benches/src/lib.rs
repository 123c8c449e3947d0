//! Benchmarks; binaries are added by the kernel and training issues.
