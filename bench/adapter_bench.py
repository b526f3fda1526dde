"""Hot-swap figures: how soon a registered adapter answers, and what merging gains.

    python bench/adapter_bench.py [--tokens 64] [--repeats 3]

Runs the real server on a loopback port (embedded SmolLM2, 4-bit) and measures, in one run:
- hot-load: from `AdapterStore.register` (what the trainer does) to the first streamed token of a chat
  with that adapter, with no management call; and from `POST /v1/adapters {"name", "path"}` likewise;
- merge gain: single-stream decode tokens/s for one adapter under `--merge-policy never` (unmerged LoRA)
  and `always` (merged into dense weights), next to the base model, on the same machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from hotlora_adapters import AdapterStore  # noqa: E402

from support.live_server import BASE_ID, save_random_lora, serving  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]


def first_token_after(client: httpx.Client, model: str, started: float) -> float:
    """Seconds from `started` until the first streamed token of a chat with `model`."""
    while True:
        body = {"model": model, "messages": PROMPT, "max_tokens": 1, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code == 404:  # not visible yet: ask again
                response.read()
                time.sleep(0.01)
                continue
            response.raise_for_status()
            for line in response.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    return time.perf_counter() - started
        raise AssertionError("stream ended without a token")


def decode_rate(client: httpx.Client, model: str, tokens: int) -> float:
    """Tokens/s of one greedy request of exactly `tokens` tokens after its first (prefill excluded)."""
    body = {"model": model, "messages": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True}
    stamps: list[float] = []
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                stamps.append(time.perf_counter())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home, store, library = root / "home", root / "store", root / "library"
        from hotlora_server.engine.loader import resolve_model
        from hotlora_server.settings import Settings

        _, model_dir = resolve_model(Settings.build({"home": str(home)}, {}))
        for i in range(args.repeats * 2 + 1):
            save_random_lora(Path(model_dir), library / f"lora{i}", seed=i, strength=0.25)

        rows: list[tuple[str, str]] = []
        never = ["--home", str(home), "--adapters-dir", str(store), "--allow-adapter-dir", str(library)]
        with (
            serving(never, root / "never.log") as server,
            httpx.Client(base_url=server.base_url, timeout=300) as client,
        ):
            first_token_after(client, BASE_ID, time.perf_counter())  # warm-up
            registered = []
            for i in range(args.repeats):
                started = time.perf_counter()
                AdapterStore(store).register(f"reg{i}", library / f"lora{i}")
                registered.append(first_token_after(client, f"reg{i}", started))
            loaded = []
            for i in range(args.repeats, 2 * args.repeats):
                started = time.perf_counter()
                response = client.post(
                    "/v1/adapters", json={"name": f"api{i}", "path": str(library / f"lora{i}")}
                )
                response.raise_for_status()
                loaded.append(first_token_after(client, f"api{i}", started))
            base = decode_rate(client, BASE_ID, args.tokens)
            unmerged = decode_rate(client, "reg0", args.tokens)
        always = ["--home", str(home), "--adapters-dir", str(store), "--merge-policy", "always"]
        with (
            serving(always, root / "always.log") as server,
            httpx.Client(base_url=server.base_url, timeout=300) as client,
        ):
            first_token_after(client, "reg0", time.perf_counter())  # loads and merges
            merged = decode_rate(client, "reg0", args.tokens)
        rows.append(
            ("hot-load: register in store -> first token (median)", f"{statistics.median(registered):.2f} s")
        )
        rows.append(
            ("hot-load: POST /v1/adapters -> first token (median)", f"{statistics.median(loaded):.2f} s")
        )
        rows.append((f"decode, base model ({args.tokens} tokens)", f"{base:.1f} tokens/s"))
        rows.append(("decode, adapter unmerged (--merge-policy never)", f"{unmerged:.1f} tokens/s"))
        rows.append(("decode, adapter merged (--merge-policy always)", f"{merged:.1f} tokens/s"))
        rows.append(("merge gain (merged / unmerged)", f"{merged / unmerged:.2f}x"))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
