"""Decoding a server-sent-events byte stream into the payloads of its `data:` fields."""
import re
from collections.abc import AsyncIterator

EVENT_SEPARATOR = re.compile(rb"\r?\n\r?\n")


async def iter_sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Yield each event's data (multi-line data joined by newlines) as soon as it is complete."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        *events, buffer = EVENT_SEPARATOR.split(buffer)
        for event in events:
            data = event_data(event)
            if data is not None:
                yield data
    data = event_data(buffer)
    if data is not None:
        yield data


def event_data(event: bytes) -> str | None:
    """The data of one raw event, or None when it has no data field (e.g. a comment)."""
    lines = [line.rstrip(b"\r") for line in event.split(b"\n")]
    values = [_field_value(line) for line in lines if line.startswith(b"data:")]
    if not values:
        return None
    return b"\n".join(values).decode("utf-8")


def _field_value(line: bytes) -> bytes:
    value = line[len(b"data:"):]
    return value[1:] if value.startswith(b" ") else value
