"""Entry point of the speed benchmarks: ``python benchmarks/run.py [options]`` (= ``dmd bench``).

Example, the issue's CPU settings on 2 threads:
    python benchmarks/run.py --dataset mosi --aligned --threads 2
    python benchmarks/run.py --dataset mosi --aligned --bert-layers 2 --threads 2
    python benchmarks/run.py --dataset mosi --unaligned --threads 2 --window-batches 10
"""

import sys

from dmd_core.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
