"""`python -m gsm.bench`: the benchmarks (gsm/cli/bench.py), under the name docs and scripts use."""
from gsm.cli.bench import main

if __name__ == "__main__":
    main()
