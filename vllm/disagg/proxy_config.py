"""Settings of one proxy process, validated once when built."""
from dataclasses import dataclass, field
from typing import Optional

PREFILL = "prefill"
DECODE = "decode"
ROLES = (PREFILL, DECODE)


@dataclass(frozen=True)
class ProxyConfig:
    """Where the proxy listens, which instances it routes to, its timings and API keys.

    Instance URLs are base URLs such as ``http://10.0.0.1:8100`` (no trailing slash).
    `api_key`: what clients must send (None: no check); `instance_api_key`: what the proxy
    sends to instances instead of the client's Authorization (None: forward the client's).
    Raises ValueError on an empty decoder list, duplicate URLs or non-positive timings.
    """
    host: str
    port: int
    prefill_urls: list[str] = field(default_factory=list)
    decode_urls: list[str] = field(default_factory=list)
    health_interval_s: float = 2.0
    request_timeout_s: float = 600.0
    probe_timeout_s: float = 5.0
    api_key: Optional[str] = field(default=None, repr=False)
    instance_api_key: Optional[str] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if not self.decode_urls:
            raise ValueError("at least one decode instance is required")
        for name, urls in (("prefill", self.prefill_urls), ("decode", self.decode_urls)):
            _check_unique(name, urls)
        for name in ("health_interval_s", "request_timeout_s", "probe_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    def urls(self, role: str) -> list[str]:
        """The base URLs of one role ("prefill" or "decode")."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
        return self.prefill_urls if role == PREFILL else self.decode_urls


def _check_unique(role: str, urls: list[str]) -> None:
    seen = set()
    for url in urls:
        if url in seen:
            raise ValueError(f"{role} instance {url} is listed twice")
        seen.add(url)


def base_url(host: str, port: int) -> str:
    """``http://host:port``; IPv6 literals are bracketed. Raises ValueError on a bad port."""
    if not host:
        raise ValueError("an instance host is empty")
    if not 1 <= port <= 65535:
        raise ValueError(f"instance port must be in 1..65535, got {port}")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"
