"""KV transfer between instances: connector interfaces, registry, and the push connector."""
