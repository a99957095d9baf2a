"""llama.cpp (through llama-cpp-python, built from source) on the same GGUF, prompt,
token count and thread count as `cargo run --release -p ragway-engine --example bench`.

    python3 scripts/bench-llamacpp.py MODEL.gguf THREADS [--long]
"""
import resource
import sys
import time

from jinja2.sandbox import ImmutableSandboxedEnvironment
from llama_cpp import Llama

PROMPT = (
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle. "
    "Describe the sea, the weather, the keeper's daily routine, and what the message says."
)
GENERATE = 128
LONG = 24
# ragway's fallbacks for files without a chat template (engine/src/template.rs).
CHATML = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
GEMMA = "{{ bos_token }}{% for message in messages %}{% if message.role == 'system' %}{% set role = 'user' %}{% elif message.role == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message.role %}{% endif %}<start_of_turn>{{ role }}\n{{ message.content }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"


def main():
    path, threads = sys.argv[1], int(sys.argv[2])
    prompt_text = " ".join([PROMPT] * (LONG if "--long" in sys.argv[3:] else 1))
    started = time.perf_counter()
    llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=2048, verbose=False)
    load = time.perf_counter() - started
    # The file's own chat template, as ragway renders it.
    env = ImmutableSandboxedEnvironment(trim_blocks=False, lstrip_blocks=False)
    env.globals["raise_exception"] = lambda message: (_ for _ in ()).throw(ValueError(message))
    fallback = GEMMA if llm.metadata.get("general.architecture", "").startswith("gemma") else CHATML
    template = env.from_string(llm.metadata.get("tokenizer.chat_template") or fallback)
    text = template.render(
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": prompt_text},
        ],
        add_generation_prompt=True,
        bos_token=llm.detokenize([llm.token_bos()], special=True).decode(),
        eos_token=llm.detokenize([llm.token_eos()], special=True).decode(),
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
