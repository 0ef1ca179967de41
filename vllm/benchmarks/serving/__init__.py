"""Online serving benchmark: drives an OpenAI-compatible server and reports latency metrics."""
