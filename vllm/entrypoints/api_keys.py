"""What an API key guards (vllm serve and vllm proxy alike): open paths, header, refusal."""

OPEN_PATHS = frozenset({"/health", "/metrics"})  # every other route needs the key
INVALID_API_KEY_CODE = "invalid_api_key"
INVALID_API_KEY_MESSAGE = "Incorrect or missing API key (expected 'Authorization: Bearer <key>')"


def bearer(api_key: str) -> str:
    """The Authorization header value that carries `api_key`."""
    return f"Bearer {api_key}"
