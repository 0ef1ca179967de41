"""Fixtures of this folder: the fake-NPU platform (fake_npu_platform.py)."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from fake_npu_platform import npu_platform  # noqa: E402,F401
