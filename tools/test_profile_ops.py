"""tools/profile_ops.py --stalls: the summary of ncu's per-instruction stall samples."""

from __future__ import annotations

import csv
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
profile_ops = pytest.importorskip("profile_ops")


def test_stalls_ranks_instructions_by_samples(tmp_path):
    head = ["Address", "Source", "Warp Stall Sampling (All Samples)",
            "Warp Stall Sampling (Not-issued Samples)", "stall_barrier", "stall_long_sb",
            "stall_wait", "stall_barrier (Not Issued)"]
    rows = [["0x10", "LDG.E.128 R4, [R2.64]", "30", "28", "0", "25", "5", "0"],
            ["0x20", "UCGABAR_WAIT", "60", "60", "58", "0", "2", "58"],
            ["0x30", "FFMA R1, R2, R3, R4", "10", "2", "0", "0", "10", "0"],
            ["0x40", "EXIT", "0", "0", "0", "0", "0", "0"]]
    path = tmp_path / "src.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(["Kernel Name", "k"])  # ncu's first line names the kernel
        w.writerow(head)
        w.writerows(rows)
    top = profile_ops.stalls(str(path), top=3)
    assert [s for _, s, _ in top] == ["UCGABAR_WAIT", "LDG.E.128 R4, [R2.64]",
                                     "FFMA R1, R2, R3, R4"]
    assert [round(share, 3) for share, _, _ in top] == [0.6, 0.3, 0.1]
    # the two largest reasons, without the not-issued duplicates
    assert top[0][2] == "barrier=58 wait=2"
    assert top[1][2] == "long_sb=25 wait=5"
    assert top[2][2] == "wait=10"
