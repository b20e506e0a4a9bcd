"""The benchmarks behind `spatten bench`: tables, JSON and plots under build/bench."""
