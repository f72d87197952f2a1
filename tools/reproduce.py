#!/usr/bin/env python
"""The Frepa study behind ``docs/results.md`` (:mod:`frepa_monai.study.reproduce`; ``--help`` says everything)."""

from __future__ import annotations

import sys

from frepa_monai.study import reproduce

if __name__ == "__main__":
    reproduce.main(sys.argv[1:])
