"""The model under a forward context (paged KV cache): chunked prefill, then batched decodes,
give the same logits as recomputing each full sequence without a cache."""
import torch

from vllm.attention.backend import CommonAttentionMetadata
from vllm.forward_context import set_forward_context
from vllm.model_executor.model_loader import get_model

BLOCK_SIZE, NUM_BLOCKS = 4, 16


def metadata(query_lens, seq_lens, block_rows) -> CommonAttentionMetadata:
    starts = [0]
    for n in query_lens:
        starts.append(starts[-1] + n)
    slots = [row[pos // BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE
             for n, seq_len, row in zip(query_lens, seq_lens, block_rows)
             for pos in range(seq_len - n, seq_len)]
    return CommonAttentionMetadata(
        num_actual_tokens=starts[-1], num_decodes=sum(n == 1 for n in query_lens),
        query_start_loc_list=starts, seq_lens_list=list(seq_lens),
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_table=torch.tensor(block_rows, dtype=torch.int32),
        slot_mapping=torch.tensor(slots, dtype=torch.int64))


def test_prefill_then_decode_matches_recompute(tmp_path, tiny_config, save_hf_model):
    config = tiny_config("Qwen2ForCausalLM")
    save_hf_model(config, tmp_path)
    model = get_model(str(tmp_path), config, torch.float32, "cpu")
    head_dim = config.hidden_size // config.num_attention_heads
    kv_caches = {f"model.layers.{i}.self_attn.attn":
                 torch.zeros(2, NUM_BLOCKS, BLOCK_SIZE, config.num_key_value_heads, head_dim)
                 for i in range(config.num_hidden_layers)}
    seqs = [[5, 9, 200, 31, 7, 64], [3, 77, 150]]
    rows = [[1, 2, 3, 0], [4, 5, 0, 0]]

    def step(tokens_per_seq, positions_per_seq, query_lens, seq_lens, block_rows):
        ids = torch.tensor([t for seq in tokens_per_seq for t in seq])
        pos = torch.tensor([p for seq in positions_per_seq for p in seq])
        with torch.inference_mode(), set_forward_context(
                metadata(query_lens, seq_lens, block_rows), kv_caches):
            return model.compute_logits(model(ids, pos))

    # prefill: the first prompt in two chunks (4 tokens, then 2 with the second prompt)
    step([seqs[0][:4]], [range(4)], [4], [4], rows[:1])
    step([seqs[0][4:], seqs[1]], [range(4, 6), range(3)], [2, 3], [6, 3], rows)
    # two decode steps for both sequences, decodes first in the batch
    for new_tokens in ([11, 12], [13, 14]):
        seqs = [seq + [tok] for seq, tok in zip(seqs, new_tokens)]
        lens = [len(s) for s in seqs]
        logits = step([[s[-1]] for s in seqs], [[n - 1] for n in lens], [1, 1], lens, rows)
        for i, seq in enumerate(seqs):
            with torch.inference_mode():
                full = model.compute_logits(model(torch.tensor(seq), torch.arange(len(seq))))
            torch.testing.assert_close(logits[i], full[-1], atol=1e-4, rtol=1e-4)
