"""Stop conditions the engine core checks after each sampled token."""
from vllm.core.request import Request, RequestStatus


def check_stop(request: Request, max_model_len: int) -> bool:
    params = request.sampling_params
    if request.num_tokens >= max_model_len or request.num_output_tokens >= request.max_tokens:
        request.status = RequestStatus.FINISHED_LENGTH_CAPPED
        return True
    if request.num_output_tokens < params.min_tokens:
        return False
    last_token = request.output_token_ids[-1]
    if not params.ignore_eos and last_token in request.eos_token_ids:
        request.status = RequestStatus.FINISHED_STOPPED
        return True
    if params.stop_token_ids and last_token in params.stop_token_ids:
        request.status = RequestStatus.FINISHED_STOPPED
        request.stop_reason = last_token
        return True
    return False
