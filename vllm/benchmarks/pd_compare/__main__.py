import sys

from vllm.benchmarks.pd_compare.main import main

sys.exit(main())
