"""patgate's benchmarks: ``python bench/run.py`` measures every SPEC target in one run."""
