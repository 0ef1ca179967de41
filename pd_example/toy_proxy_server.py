"""The disaggregated prefill/decode proxy; same flags as `vllm proxy`.

python toy_proxy_server.py --host 0.0.0.0 --port 1025 \
    --prefiller-hosts 10.0.0.1 --prefiller-port 20002 \
    --decoder-hosts 10.0.0.2 --decoder-ports 20002
"""
import sys

from vllm.disagg.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
