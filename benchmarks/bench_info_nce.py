"""Moved to jem_fast.bench.bench_info_nce, so that the installed `jem-fast bench` runs it; this shim
keeps `python -m benchmarks.bench_info_nce ...` (scripts/bench.sh, scripts/gpu_check.sh) working."""
from jem_fast.bench.bench_info_nce import main

if __name__ == "__main__":
    main()
