"""Entry point: `python -m benchmarks [--quick] [options]`."""

from benchmarks.run import main

if __name__ == "__main__":
    main()
