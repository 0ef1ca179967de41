"""Loading the tokenizer that sizes prompts and counts generated tokens."""
import os


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """A Hugging Face tokenizer from a hub name, a folder, or a .gguf file."""
    from transformers import AutoTokenizer

    if name_or_path.endswith(".gguf"):
        folder, file_name = os.path.split(os.path.abspath(name_or_path))
        return AutoTokenizer.from_pretrained(folder, gguf_file=file_name,
                                             trust_remote_code=trust_remote_code)
    return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)


def count_tokens(tokenizer, text: str) -> int:
    """Number of tokens in text, without special tokens."""
    return len(tokenizer.encode(text, add_special_tokens=False))
