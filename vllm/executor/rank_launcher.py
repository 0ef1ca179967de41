"""How the rank processes are started, watched and stopped (multiprocessing or Ray)."""
import threading
from abc import ABC, abstractmethod
from typing import Callable, Optional

from vllm.config import VllmConfig
from vllm.executor.worker_proc import RankSpec
from vllm.logger import init_logger

logger = init_logger(__name__)


class RankLauncher(ABC):
    """Owns the rank processes of one executor."""

    @abstractmethod
    def host_address(self) -> str:
        """The address the ranks reach this process at (ZMQ and rendezvous)."""

    @abstractmethod
    def launch(self, vllm_config: VllmConfig, template: RankSpec) -> None:
        """Start every rank; `template` has all fields but the rank's own ones."""

    @abstractmethod
    def wait_for_exit(self, timeout_s: float) -> Optional[str]:
        """Wait until a rank has exited: a line saying which and how; None on timeout."""

    @abstractmethod
    def stop(self, grace_s: float) -> None:
        """Give the ranks `grace_s` to exit by themselves, then end them."""


class RankHealth:
    """Whether the ranks can still serve; the first failure marks them dead for good."""

    def __init__(self):
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._error: Optional[str] = None
        self._callbacks: list[Callable[[str], None]] = []

    @property
    def error(self) -> Optional[str]:
        return self._error

    def add_callback(self, callback: Callable[[str], None]) -> None:
        with self._lock:
            self._callbacks.append(callback)

    def mark_dead(self, error: str) -> None:
        with self._lock:
            if self._error is not None:
                return
            self._error = error
            callbacks = list(self._callbacks)
        logger.error("tensor-parallel ranks are dead: %s", error)
        for callback in callbacks:
            try:
                callback(error)
            except Exception:
                logger.exception("rank failure callback raised")


def watch_ranks(launcher: RankLauncher, health: RankHealth, poll_s: float = 0.5) -> None:
    """Monitor thread body: mark the ranks dead when one exits before shutdown."""
    while not health.stopping.is_set():
        try:
            exited = launcher.wait_for_exit(poll_s)
        except Exception as error:
            exited = None if health.stopping.is_set() else f"lost track of the ranks: {error}"
            if exited is None:
                return
        if exited is not None:
            if not health.stopping.is_set():
                health.mark_dead(exited)
            return
