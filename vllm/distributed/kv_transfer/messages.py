"""Control-plane messages of the push connector (msgspec, one tagged union on one socket).

Engine core <-> engine core: ConsumerReady, ProducerAccept, ConsumerAck, TransferAbort.
Worker rank -> its own engine core: RankRecvDone, RankTransferFailed.
"""
from typing import Optional, Union

import msgspec

from vllm.kv_shape import CacheUnits


class KVLayout(msgspec.Struct, frozen=True):
    num_layers: int
    units: CacheUnits  # the kind of cache and its units over all ranks
    dtype: str


class ConsumerReady(msgspec.Struct, tag=True):
    """Decode side -> prefill side: blocks are reserved, send tokens [start, end)."""
    key: str
    engine_id: str
    nonce: str
    control_addr: str  # where to send ProducerAccept / TransferAbort
    store_addr: str  # TCP store for the per-pair process groups
    tp_size: int
    transfer_id: int
    token_start: int
    token_end: int
    layout: KVLayout


class ProducerAccept(msgspec.Struct, tag=True):
    """Prefill side -> decode side: the request is here; these ranks will send."""
    key: str
    engine_id: str
    nonce: str
    tp_size: int


class ConsumerAck(msgspec.Struct, tag=True):
    """Decode side -> prefill side: every rank holds the KV; free your blocks."""
    key: str


class TransferAbort(msgspec.Struct, tag=True):
    """Either side -> the other: this transfer is off (reason says why)."""
    key: str
    reason: str
    reply_addr: Optional[str] = None  # sender's control address, for an unknown key


class RankRecvDone(msgspec.Struct, tag=True):
    key: str
    rank: int


class RankTransferFailed(msgspec.Struct, tag=True):
    keys: list[str]
    rank: int
    reason: str


ControlMessage = Union[ConsumerReady, ProducerAccept, ConsumerAck, TransferAbort,
                       RankRecvDone, RankTransferFailed]
