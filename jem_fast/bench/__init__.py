"""The jem_fast microbenchmarks, one module per op family (`python -m jem_fast.bench.bench_<family>`
or `jem-fast bench`). They time jem_fast against the eager references in jem_fast.reference (the
same oracle the tests use), torch.compile of them and the peers that are importable."""
