"""Moved to jem_fast.bench.bench_clustering, so that the installed `jem-fast bench` runs it; this shim
keeps `python -m benchmarks.bench_clustering ...` (scripts/bench.sh, scripts/gpu_check.sh) working."""
from jem_fast.bench.bench_clustering import main

if __name__ == "__main__":
    main()
