"""The kernels each CUDA call launches, with their grids, blocks, shared memory and cluster
sizes, for every T in 1..16384, H in {4096, 5120, 7168} and 78 / 132 / 148 SMs (n = 4; and n = 1,
2, 3, 8 at H = 4096, 132 SMs; the DeepSeek-V4.1 ops at H = 5120), against
tests/data/launch_table.json (tools/record_launch_table.py). A planner or launcher change that
alters any launch fails here until the table is re-recorded on purpose.

Runs on the CPU: launches_of is the host function the CUDA launchers execute.
"""
import json
import pathlib

import pytest

from mhc_ops import _C

TABLE = json.loads((pathlib.Path(__file__).parent / "data" / "launch_table.json").read_text())
RESIDENT = 15  # clusters of the persistent hc_head kernel resident at once (any value works)


def _grid_x(rule, t):
    if rule[0] == "blocks":
        return -(-t // rule[1]) * rule[2]
    if rule[0] == "tokens":
        return t * rule[1]
    if rule[0] == "persist":
        return min(-(-t // rule[1]), RESIDENT) * rule[2]
    assert rule[0] == "fixed"
    return rule[1]


def _case_id(c):
    return (f"{c['op']}-n{c['hc_mult']}-H{c['hidden']}-sms{c['num_sms']}"
            f"{'-norm' if c['norm'] else ''}{'-bi' if c['batch_invariant'] else ''}")


@pytest.mark.parametrize("case", TABLE["table"], ids=_case_id)
def test_launches_match_recorded_table(case):
    kind, n, h, sms = case["kind"], case["hc_mult"], case["hidden"], case["num_sms"]
    mismatches = []
    for lo, hi, rows in case["runs"]:
        for t in range(lo, hi + 1):
            want = [(k, _grid_x(rule, t), gy, block, smem, cl)
                    for k, rule, gy, block, smem, cl in rows]
            got = [tuple(x) for x in _C.launches_of(kind, t, n, h, sms, case["norm"],
                                                    case["batch_invariant"], False, True,
                                                    RESIDENT)]
            if got != want:
                mismatches.append((t, want, got))
                if len(mismatches) >= 3:
                    break
        if len(mismatches) >= 3:
            break
    assert not mismatches, f"{_case_id(case)}: first mismatches (T, recorded, now): {mismatches}"


def test_table_covers_every_token_count():
    for case in TABLE["table"]:
        runs = case["runs"]
        assert runs[0][0] == 1 and runs[-1][1] == TABLE["max_tokens"] == 16384
        assert all(a[1] + 1 == b[0] for a, b in zip(runs, runs[1:])), _case_id(case)
