"""Moved to jem_fast.bench.bench_augment, so that the installed `jem-fast bench` runs it; this shim
keeps `python -m benchmarks.bench_augment ...` (scripts/bench.sh, scripts/gpu_check.sh) working."""
from jem_fast.bench.bench_augment import main

if __name__ == "__main__":
    main()
