"""The data-path benchmarks that ``benchmarks/bench_data_paths.py`` runs, one module each."""
