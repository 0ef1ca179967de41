"""Greedy generation with Hugging Face transformers, the independent reference."""
import torch


@torch.inference_mode()
def hf_greedy(model, prompt_ids: list[int], max_tokens: int, top_k: int = 5):
    """Returns (token_ids, per-step {token_id: logprob} of the top_k) with no KV cache."""
    ids = list(prompt_ids)
    tokens, top = [], []
    past = None
    next_input = torch.tensor([ids])
    for _ in range(max_tokens):
        out = model(input_ids=next_input, past_key_values=past, use_cache=True)
        past = out.past_key_values
        logprobs = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        values, indices = logprobs.topk(top_k)
        token = int(indices[0])
        tokens.append(token)
        top.append(dict(zip(indices.tolist(), values.tolist())))
        next_input = torch.tensor([[token]])
    return tokens, top


def check_close(ours_tokens, ours_logprobs, hf_tokens, hf_logprobs, label=""):
    """vLLM's rule: identical until the first mismatch, where each side's token must be in
    the other's top-k; returns the number of identical leading tokens."""
    for position, (a, b) in enumerate(zip(ours_tokens, hf_tokens)):
        if a == b:
            continue
        assert b in ours_logprobs[position], (
            f"{label} position {position}: HF token {b} not in our top-k {ours_logprobs[position]}")
        assert a in hf_logprobs[position], (
            f"{label} position {position}: our token {a} not in HF top-k {hf_logprobs[position]}")
        return position
    return min(len(ours_tokens), len(hf_tokens))
