"""Moved to jem_fast.bench.bench_deepcluster, so that the installed `jem-fast bench` runs it; this shim
keeps `python -m benchmarks.bench_deepcluster ...` (scripts/bench.sh, scripts/gpu_check.sh) working."""
from jem_fast.bench.bench_deepcluster import main

if __name__ == "__main__":
    main()
