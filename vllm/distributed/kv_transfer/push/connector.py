"""The push connector as the registry names it: its two halves."""
from vllm.distributed.kv_transfer.push.scheduler import PushConnectorScheduler
from vllm.distributed.kv_transfer.push.worker import PushConnectorWorker


class PushConnector:
    """Producer ranks push each layer's KV to consumer ranks over per-pair process groups
    (gloo, NCCL or HCCL by platform); a ZMQ control plane carries the rest."""
    Scheduler = PushConnectorScheduler
    Worker = PushConnectorWorker
