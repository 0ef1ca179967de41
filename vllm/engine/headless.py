"""A headless node (`vllm serve --headless`): join the head, run this node's data-parallel
engine cores connected to it, and exit once they have all stopped."""
import signal

from vllm.engine.core_launcher import LocalEngineCores, RankAddresses
from vllm.engine.dp_handshake import join_head
from vllm.logger import init_logger

logger = init_logger(__name__)


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt()


def run_headless(vllm_config, executor_cls=None) -> int:
    """JoinRefused (a ValueError) when the head and this node disagree; else the exit
    code: 0 when the head stopped every engine core, 1 when one died."""
    endpoints = join_head(vllm_config)
    cores = LocalEngineCores(vllm_config, executor_cls)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        cores.start([RankAddresses(e.rank, e.input_addresses, e.output_addresses)
                     for e in endpoints])
        return cores.watch()
    except KeyboardInterrupt:
        logger.info("headless node stopped")
        return 0
    finally:
        cores.stop()
