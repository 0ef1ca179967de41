"""Two real tensor-parallel ranks (gloo on CPU) reproduce the single-rank logits."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from free_ports import free_port

PROMPT = [1, 17, 42, 254, 3, 99, 128, 7]



def run_rank(rank: int, world_size: int, port: int, folder: str, out_path: str) -> None:
    from vllm.distributed.parallel_state import init_tensor_parallel
    from vllm.model_executor.model_loader import get_model
    from vllm.transformers_utils.config import get_hf_config
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world_size)
    try:
        init_tensor_parallel(rank, world_size)
        model = get_model(folder, get_hf_config(folder), torch.float32, "cpu")
        input_ids = torch.tensor(PROMPT)
        with torch.inference_mode():
            logits = model.compute_logits(model(input_ids, torch.arange(len(PROMPT))))
        if rank == 0:
            torch.save(logits, out_path)
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_hf(tmp_path, tiny_config, save_hf_model):
    # 4 heads / 2 kv heads and a vocabulary that does not split evenly (255 rows)
    config = tiny_config("Qwen2ForCausalLM", vocab_size=255, tie_word_embeddings=True)
    hf_model = save_hf_model(config, tmp_path / "ckpt")
    out_path = str(tmp_path / "logits.pt")
    mp.start_processes(run_rank, args=(2, free_port(), str(tmp_path / "ckpt"), out_path),
                       nprocs=2, join=True, start_method="spawn")
    with torch.inference_mode():
        expected = hf_model(torch.tensor([PROMPT])).logits[0]
    torch.testing.assert_close(torch.load(out_path), expected, atol=1e-4, rtol=1e-4)
