"""llama.cpp (through llama-cpp-python, built from source) on the same GGUF, prompt,
token count and thread count as `cargo run --release -p ragway-engine --example bench`.

    python3 scripts/bench-llamacpp.py MODEL.gguf THREADS [--long]
"""
import resource
import sys
import time

from llama_cpp import Llama

PROMPT = (
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle. "
    "Describe the sea, the weather, the keeper's daily routine, and what the message says."
)
GENERATE = 128
LONG = 24


def main():
    path, threads = sys.argv[1], int(sys.argv[2])
    prompt_text = " ".join([PROMPT] * (LONG if "--long" in sys.argv[3:] else 1))
    started = time.perf_counter()
    llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=2048, verbose=False)
    load = time.perf_counter() - started
    text = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{prompt_text}<|im_end|>\n<|im_start|>assistant\n"
    )
    prompt = llm.tokenize(text.encode(), add_bos=False, special=True)

    def run(n):
        llm.reset()
        started = time.perf_counter()
        llm.eval(prompt)
        prefill = time.perf_counter() - started
        tokens = 0
        started = time.perf_counter()
        for _ in range(n):
            token = llm.sample(temp=0.0, repeat_penalty=1.0)
            if token == llm.token_eos():
                break
            llm.eval([token])
            tokens += 1
        return prefill, time.perf_counter() - started, tokens

    run(4)
    prefill, generation, tokens = run(GENERATE)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(
        f"llama.cpp model={path.rsplit('/', 1)[-1]} threads={threads} load_s={load:.2f} "
        f"prompt_tokens={len(prompt)} pp_tok_s={len(prompt) / prefill:.1f} generated={tokens} "
        f"gen_tok_s={tokens / generation:.1f} peak_rss_mib={peak}"
    )


if __name__ == "__main__":
    main()
