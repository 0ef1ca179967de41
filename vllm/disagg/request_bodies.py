"""What the prefill and decode instances receive for one client request."""
from typing import Any, Optional

from vllm.kv_transfer_params import KV_TRANSFER_PARAMS, KvInfo, consumer_params, producer_params


def prefill_body(body: dict[str, Any]) -> dict[str, Any]:
    """The client body turned into a one-token, non-streamed prefill that keeps its KV."""
    prefill = dict(body)
    prefill["max_tokens"] = 1
    if "max_completion_tokens" in prefill:
        prefill["max_completion_tokens"] = 1
    prefill.pop("min_tokens", None)
    prefill["stream"] = False
    prefill.pop("stream_options", None)
    prefill["n"] = 1
    prefill[KV_TRANSFER_PARAMS] = producer_params()
    return prefill


def decode_body(body: dict[str, Any], producer: Optional[KvInfo]) -> dict[str, Any]:
    """The client body with remote-prefill params pointing at the producer's KV endpoint.

    Without a producer (no healthy prefiller, or its KV endpoint unknown) the decoder
    gets the body without kv_transfer_params and computes the prompt itself.
    """
    decode = dict(body)
    decode.pop(KV_TRANSFER_PARAMS, None)
    if producer is None:
        return decode
    decode[KV_TRANSFER_PARAMS] = consumer_params(producer)
    return decode
