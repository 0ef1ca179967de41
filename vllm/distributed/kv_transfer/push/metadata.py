"""What the push connector's scheduler half tells its worker halves each step."""
from dataclasses import dataclass, field


@dataclass
class SendJob:
    """Producer ranks: send tokens [token_start, token_end) of a request's KV."""
    key: str
    transfer_id: int
    consumer_engine: str
    consumer_nonce: str
    consumer_tp: int
    store_addr: str
    block_ids: list[int]  # the producer's blocks of the request
    token_start: int
    token_end: int
    streamed: bool  # True: computed during this step, sent layer by layer as it is


@dataclass
class RecvJob:
    """Consumer ranks: tokens [token_start, token_end) will arrive into block_ids."""
    key: str
    transfer_id: int
    block_ids: list[int]
    token_start: int
    token_end: int
    producer_engine: str
    producer_nonce: str
    producer_tp: int
    store_addr: str


@dataclass
class PushMetadata:
    engine_nonce: str
    sends: list[SendJob] = field(default_factory=list)
    recvs: list[RecvJob] = field(default_factory=list)
    cancels: list[int] = field(default_factory=list)  # transfer ids
