"""GPU smoke check: the real server on CUDA, 4-bit base, one plain and one adapter request, tokens/s.

    python bench/gpu_check.py [--model PATH.gguf|HF_FOLDER] [--device cuda|cpu]

Starts `hotlora serve --device cuda` on a loopback port with a real PEFT adapter in a temporary store,
times one base and one adapter chat completion, then plain `transformers` `generate` on the same 4-bit
model in this process as the baseline. On a machine without CUDA it says so and exits 0; `--device cpu`
measures the same on the CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]


def timed_chat(client: httpx.Client, model: str, max_tokens: int) -> tuple[str, int, float]:
    started = time.perf_counter()
    response = client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0},
    )
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    body = response.json()
    return body["choices"][0]["message"]["content"], body["usage"]["completion_tokens"], elapsed


def baseline_tokens_per_s(model_dir: Path, max_tokens: int, device: torch.device) -> float:
    """The same model in 4-bit through plain `transformers` `generate`, in this process: the ratio's baseline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hotlora_adapters.runtime.base_model import pick_dtype, quantization_config

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    quant = quantization_config("nf4", pick_dtype("auto", device.type))
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=quant, device_map={"": device}
    )
    text = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, return_tensors="pt").input_ids.to(device)
    model.generate(ids, max_new_tokens=8, do_sample=False)  # warm-up
    started = time.perf_counter()
    out = model.generate(ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
    return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model to serve (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: skipped, no CUDA device on this machine (--device cpu measures the CPU)")
        return 0

    from hotlora_server.engine.loader import resolve_model
    from hotlora_server.settings import Settings

    from support.live_server import save_random_lora, serving

    with tempfile.TemporaryDirectory() as tmp:
        home, store = Path(tmp) / "home", Path(tmp) / "store"
        flags = {"model": args.model, "home": str(home)}
        _, model_dir = resolve_model(Settings.build(flags, os.environ))  # converts a GGUF once
        save_random_lora(Path(model_dir), store / "gpu-lora")
        serve_args = ["--device", args.device, "--home", str(home), "--adapters-dir", str(store)]
        if args.model:
            serve_args += ["--model", args.model, "--served-model-name", "base"]
        with (
            serving(serve_args, Path(tmp) / "server.log") as server,
            httpx.Client(base_url=server.base_url, timeout=300) as client,
        ):
            base_id = client.get("/v1/models").json()["data"][0]["id"]
            timed_chat(client, base_id, 8)  # warm-up: CUDA context, kernels
            name = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
            print(f"device: {name}, torch {torch.__version__}")
            for model in (base_id, "gpu-lora"):
                text, tokens, seconds = timed_chat(client, model, args.max_tokens)
                print(
                    f"{model:>24}: {tokens} tokens in {seconds:.2f}s = {tokens / seconds:.1f} tokens/s; {text[:60]!r}"
                )
        baseline = baseline_tokens_per_s(Path(model_dir), args.max_tokens, torch.device(args.device))
        print(f"{'transformers generate':>24}: {baseline:.1f} tokens/s (same model, 4-bit, this process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
