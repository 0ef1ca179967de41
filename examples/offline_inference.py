"""Generate with the demo model (or --model PATH) through the offline LLM API."""
import argparse

from vllm import LLM, SamplingParams

PROMPTS = [
    "The capital of France is",
    "Write a haiku about autumn.",
    "def fibonacci(n):",
    "The three laws of thermodynamics are",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="HF folder or .gguf (default: demo)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.0)
    args = parser.parse_args()
    llm = LLM(model=args.model, max_model_len=2048)
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
    for output in llm.generate(PROMPTS, params):
        print(f"--- {output.prompt!r}\n{output.outputs[0].text}")
    chat = llm.chat([{"role": "user", "content": "What is the boiling point of water?"}],
                    params)
    print(f"--- chat\n{chat[0].outputs[0].text}")


if __name__ == "__main__":
    main()
