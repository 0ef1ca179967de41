"""CapturedDecodeRunner on CPU with a capture function whose replay re-runs the recorded
closure: every padded size is recorded up front (largest first), and between steps only
the static buffers' contents change (same metadata object, same tensors, new values)."""
import torch
from torch import nn

from vllm.attention.backend import AttentionBackend, CommonAttentionMetadata
from vllm.forward_context import get_forward_context
from vllm.worker.graph_runner import CapturedDecodeRunner


class EchoBackend(AttentionBackend):
    name = "ECHO"
    impl_cls = None

    @staticmethod
    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):
        return (2, num_blocks, block_size, num_kv_heads, head_size)


class EchoModel(nn.Module):
    """(B, 4): ids, positions, seq_lens, first block id of each row, as the graph reads them."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, input_ids, positions):
        md = get_forward_context().attn_metadata
        self.seen.append((md, md.seq_lens, md.block_table, md.slot_mapping))
        return torch.stack([input_ids, positions, md.seq_lens.long(),
                            md.block_table[:, 0].long()], dim=1)  # (B, 4)


def decode_step(seq_lens: list[int], first_blocks: list[int]):
    n = len(seq_lens)
    block_table = torch.tensor([[b, b + 1] for b in first_blocks], dtype=torch.int32)  # (n, 2)
    common = CommonAttentionMetadata(
        num_actual_tokens=n, num_decodes=n, query_start_loc_list=list(range(n + 1)),
        seq_lens_list=seq_lens, query_start_loc=torch.arange(n + 1, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32), block_table=block_table,
        slot_mapping=torch.tensor([b * 16 + (s - 1) % 16 for b, s in
                                   zip(first_blocks, seq_lens)], dtype=torch.int64))
    ids = torch.arange(100, 100 + n)  # (n,)
    positions = torch.tensor(seq_lens) - 1  # (n,)
    return ids, positions, common


def test_replays_read_only_the_static_buffers():
    model, recorded = EchoModel(), []

    def capture(forward):
        recorded.append(forward)
        output = forward()
        return lambda: output.copy_(forward())  # replay: same closure, same output tensor

    runner = CapturedDecodeRunner(model, EchoBackend, {}, max_num_seqs=8,
                                  max_blocks_per_seq=4, device=torch.device("cpu"),
                                  capture_fn=capture)
    runner.capture_all()
    assert sorted(runner.graphs, reverse=True) == [8, 4, 2, 1] and len(recorded) == 4
    static = (runner.seq_lens.data_ptr(), runner.block_table.data_ptr(),
              runner.slots.data_ptr())
    model.seen.clear()
    outputs = []
    for seq_lens, blocks in (([5, 9, 17], [3, 4, 5]), ([6, 10, 18], [3, 4, 5]),
                             ([2, 3, 40], [7, 8, 9])):
        ids, positions, common = decode_step(seq_lens, blocks)
        with torch.inference_mode():  # as ModelRunner.execute_model runs it
            out = runner.run(ids, positions, common)  # (3, 4), padded to 4
        outputs.append(out.clone())
        want = torch.stack([ids, positions, torch.tensor(seq_lens),
                            torch.tensor(blocks)], dim=1)
        assert torch.equal(out, want)
    metadata_objects = {id(seen[0]) for seen in model.seen}
    assert len(model.seen) == 3 and len(metadata_objects) == 1  # one recorded graph (size 4)
    for _, seq_lens, block_table, slots in model.seen:
        assert seq_lens.data_ptr() == static[0] and block_table.data_ptr() == static[1]
        assert slots.data_ptr() == static[2]
    assert not torch.equal(outputs[0], outputs[2])


def test_padding_repeats_the_last_request():
    model = EchoModel()
    runner = CapturedDecodeRunner(model, EchoBackend, {}, max_num_seqs=8,
                                  max_blocks_per_seq=4, device=torch.device("cpu"),
                                  capture_fn=lambda forward: forward)
    runner.capture_all()
    ids, positions, common = decode_step([5, 9, 17], [3, 4, 5])
    runner.run(ids, positions, common)
    assert runner.seq_lens[:4].tolist() == [5, 9, 17, 17]
    assert runner.slots[3] == runner.slots[2]
