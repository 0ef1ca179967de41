"""Helpers of this folder (kvt_harness, kvt_custom_connector) import by bare name."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
