"""Tests of the study knobs (csrc/core/study.h): the plans each knob reaches, and that the
kernels give the same bits whichever way a knob sends them. They need a study build
(MHC_STUDY=1 at build time) and run outside the product suite:

    MHC_STUDY=1 bash scripts/setup_env.sh && .venv/bin/python -m pytest tools/study
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))

import mhc_ops  # noqa: E402
from cuda_helpers import nan_filled  # noqa: E402,F401  (the product suite's fixture)


_HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items):
    if getattr(mhc_ops._C, "study_build", False):
        return
    skip = pytest.mark.skip(reason="needs a study build (MHC_STUDY=1 at build time)")
    for item in items:  # this hook sees the whole session's items: only this folder's
        if os.path.dirname(str(item.fspath)) == _HERE:
            item.add_marker(skip)
