"""Loading Hugging Face configs and tokenizers from local folders or GGUF files."""
