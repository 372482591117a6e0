"""Prints the table of a results JSON written by bench_ops.py (and redraws its plot):

  python benchmarks/report.py benchmarks/results/h100.json [--plot]
  python benchmarks/report.py benchmarks/results/v41_h100.json --plot   # DeepSeek-V4.1 ops
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_ops  # noqa: E402


def main() -> None:
    path = sys.argv[1]
    with open(path) as f:
        doc = json.load(f)
    print(f"{doc['device']}, torch {doc['torch']}, CUDA {doc['cuda']}, "
          f"copy {doc['copy_bandwidth_GBps']} GB/s")
    print(bench_ops.table(doc["rows"]))
    if doc.get("first_call_s"):
        print(bench_ops.cold_start_table(doc["first_call_s"]))
    if "--plot" in sys.argv:
        png = os.path.splitext(path)[0] + ".png"
        bench_ops.plot(doc["rows"], png, f"{doc['device']}, torch {doc['torch']}, CUDA "
                                         f"{doc['cuda']}, copy {doc['copy_bandwidth_GBps']} GB/s")
        print("wrote", png)


if __name__ == "__main__":
    main()
