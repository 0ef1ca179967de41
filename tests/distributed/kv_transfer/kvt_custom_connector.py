"""A connector defined outside the tree, loaded through kv_connector_module_path."""


class KvtCustomConnector:
    """Stands in for a third-party connector; the factory only has to return it."""

    class Scheduler:
        def __init__(self, vllm_config):
            self.vllm_config = vllm_config

    class Worker:
        def __init__(self, vllm_config, rank):
            self.rank = rank
