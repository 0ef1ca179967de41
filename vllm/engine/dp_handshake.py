"""How a headless node joins the head: one request and one answer over ZMQ (REQ/REP,
msgspec-msgpack) on the head's --data-parallel-address:--data-parallel-rpc-port. Both
sides compare the facts that must agree and refuse with one line naming the first that
does not; an accepted node gets the addresses its engine cores connect to."""
import threading
from typing import Callable, Optional

import msgspec
import zmq

from vllm.distributed.network import zmq_address
from vllm.logger import init_logger
from vllm.version import __version__

logger = init_logger(__name__)

POLL_MS = 200


class NodeFacts(msgspec.Struct):
    version: str
    model: str
    architecture: str
    tensor_parallel_size: int
    data_parallel_size: int
    dtype: str
    start_rank: int
    size_local: int


class RankEndpoint(msgspec.Struct):
    """The head's sockets for one rank, one per API server: the engine core's PULL
    connects to every input address, and it has a PUSH to every output address."""
    rank: int
    input_addresses: list[str]
    output_addresses: list[str]


class JoinAnswer(msgspec.Struct):
    head: NodeFacts
    refused: str = ""  # one line: what disagreed ("" when accepted)
    endpoints: list[RankEndpoint] = []


_COMPARED = ("version", "model", "architecture", "tensor_parallel_size",
             "data_parallel_size", "dtype")


def node_facts(vllm_config) -> NodeFacts:
    model = vllm_config.model_config
    hf = model.hf_config
    parallel = vllm_config.parallel_config
    architecture = (f"{'/'.join(getattr(hf, 'architectures', None) or ['?'])}, "
                    f"{hf.num_hidden_layers} layers, hidden {hf.hidden_size}, "
                    f"vocab {hf.vocab_size}")
    return NodeFacts(__version__, model.served_model_name, architecture,
                     parallel.tensor_parallel_size, parallel.data_parallel_size,
                     str(model.dtype).removeprefix("torch."),
                     parallel.data_parallel_start_rank, parallel.data_parallel_size_local)


def disagreement(head: NodeFacts, node: NodeFacts) -> Optional[str]:
    """The first fact the headless node and the head disagree on, as one line."""
    for name in _COMPARED:
        mine, theirs = getattr(head, name), getattr(node, name)
        if mine != theirs:
            return (f"{name.replace('_', ' ')} differs: the head has {mine!r}, the "
                    f"headless node {theirs!r}")
    return None


def describe_ranks(start: int, count: int) -> str:
    return f"rank {start}" if count == 1 else f"ranks {start}..{start + count - 1}"


class HeadListener:
    """The head's side: a thread answering join requests until every remote rank has
    joined (or close()). `endpoints` holds the sockets the head bound for each remote
    rank; `on_refused(line)` hears every refusal."""

    def __init__(self, vllm_config, endpoints: dict[int, RankEndpoint],
                 on_refused: Callable[[str], None] = lambda line: None):
        parallel = vllm_config.parallel_config
        self.facts = node_facts(vllm_config)
        self.waiting = dict(endpoints)  # rank -> endpoint, until a node claims it
        self.on_refused = on_refused
        self.address = zmq_address(parallel.data_parallel_address,
                                   parallel.data_parallel_rpc_port)
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.REP)
        try:
            self.socket.bind(self.address)
        except zmq.ZMQError as error:
            self.close()
            raise OSError(f"cannot listen for headless nodes on {self.address}: "
                          f"{error}") from None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="vllm-dp-head",
                                        daemon=True)

    def start(self) -> None:
        logger.info("waiting for headless nodes to bring data-parallel ranks %s (on %s)",
                    sorted(self.waiting), self.address)
        self._thread.start()

    def _serve(self) -> None:
        decoder = msgspec.msgpack.Decoder(NodeFacts)
        while self.waiting and not self._stop.is_set():
            if not self.socket.poll(POLL_MS):
                continue
            body = self.socket.recv()
            try:
                answer = self.answer(decoder.decode(body))
            except msgspec.DecodeError as error:
                answer = JoinAnswer(self.facts, f"malformed join request: {error}")
            if answer.refused:
                logger.error("refused a headless node: %s", answer.refused)
                self.on_refused(answer.refused)
            self.socket.send(msgspec.msgpack.encode(answer))

    def answer(self, node: NodeFacts) -> JoinAnswer:
        refused = disagreement(self.facts, node)
        wanted = list(range(node.start_rank, node.start_rank + node.size_local))
        if refused is None and not all(rank in self.waiting for rank in wanted):
            refused = (f"data-parallel {describe_ranks(node.start_rank, node.size_local)} "
                       f"asked for, but the head waits for {sorted(self.waiting) or 'none'}")
        if refused:
            return JoinAnswer(self.facts, refused)
        endpoints = [self.waiting.pop(rank) for rank in wanted]
        logger.info("a headless node joined with data-parallel %s",
                    describe_ranks(node.start_rank, node.size_local))
        return JoinAnswer(self.facts, endpoints=endpoints)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2 * POLL_MS / 1000)
        self.socket.close(linger=0)
        self.context.term()


class JoinRefused(ValueError):
    """The head and this headless node disagree; the message says on what."""


def join_head(vllm_config, timeout_s: Optional[float] = None) -> list[RankEndpoint]:
    """The headless node's side: ask the head for our ranks' endpoints (waiting for the
    head to come up); JoinRefused when either side finds a disagreement."""
    parallel = vllm_config.parallel_config
    address = zmq_address(parallel.data_parallel_address, parallel.data_parallel_rpc_port)
    mine = node_facts(vllm_config)
    context = zmq.Context()
    socket = context.socket(zmq.REQ)
    try:
        socket.connect(address)
        socket.send(msgspec.msgpack.encode(mine))
        logger.info("joining the head at %s with data-parallel %s", address,
                    describe_ranks(mine.start_rank, mine.size_local))
        if not socket.poll(None if timeout_s is None else int(timeout_s * 1000)):
            raise TimeoutError(f"no answer from the head at {address} in {timeout_s} s")
        answer = msgspec.msgpack.decode(socket.recv(), type=JoinAnswer)
    finally:
        socket.close(linger=0)
        context.term()
    refused = answer.refused or disagreement(answer.head, mine)
    if refused:
        raise JoinRefused(f"the head at {address} refused this node: {refused}")
    return answer.endpoints
