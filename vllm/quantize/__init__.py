"""`vllm quantize`: a Hugging Face folder written as a W8A8 / W8A8_DYNAMIC checkpoint in the
format vllm-ascend reads (model_executor/layers/quantization/ascend_format.py)."""
