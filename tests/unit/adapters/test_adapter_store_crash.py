"""kill -9 during registration: every adapter in the store is complete or absent, and the store recovers.

A real process registers adapters in a loop through the public API (new names, and overwrites of one
name with two different versions) and is SIGKILLed after a random short delay, again and again, so the
kills land at different steps: copying, fsync, writing the manifest, the publishing rename, deleting
the replaced copy. After each kill a fresh `AdapterStore` must list only complete adapters of one version
(config, weights and manifest), hide every leftover, and register the interrupted name again.

The adapters are PEFT-format folders written with safetensors' numpy API, so the child needs no torch and
starts in a fraction of a second.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hotlora_adapters import CONFIG_FILENAME, MANIFEST_FILENAME, WEIGHTS_FILENAME, AdapterStore

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

KILLS = 8
MAX_DELAY_S = 0.25
HIDDEN, LAYERS = 512, 4
OVERWRITTEN = "swap"
LEFTOVER_PREFIXES = (".tmp-", ".trash-")

REGISTER_FOREVER = """
import sys
from pathlib import Path
from hotlora_adapters import AdapterStore

store, first, sources = AdapterStore(Path(sys.argv[1])), int(sys.argv[2]), [Path(p) for p in sys.argv[3:]]
print("ready", flush=True)
for i in range(first, first + 1_000_000):
    source = sources[i % len(sources)]
    for name, overwrite in (("swap", True), (f"new-{i}", False)):
        print(name, flush=True)  # the registration in flight when the kill lands is the last name printed
        store.register(name, source, overwrite=overwrite)
"""


def write_peft_folder(dest: Path, rank: int, seed: int) -> Path:
    """A PEFT LoRA folder as `save_pretrained` writes it (q_proj and v_proj of a small llama)."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for layer in range(LAYERS):
        for module in ("q_proj", "v_proj"):
            key = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{key}.lora_A.weight"] = rng.standard_normal((rank, HIDDEN), dtype=np.float32)
            tensors[f"{key}.lora_B.weight"] = rng.standard_normal((HIDDEN, rank), dtype=np.float32)
    dest.mkdir()
    save_file(tensors, str(dest / WEIGHTS_FILENAME), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": ["q_proj", "v_proj"],
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "tiny-llama",
    }
    (dest / CONFIG_FILENAME).write_text(json.dumps(config, indent=2))
    return dest


def peft_bytes(folder: Path) -> tuple[bytes, bytes]:
    return (folder / CONFIG_FILENAME).read_bytes(), (folder / WEIGHTS_FILENAME).read_bytes()


def register_and_kill(root: Path, first: int, sources: list[Path], delay_s: float) -> str | None:
    """Run the registering loop, SIGKILL it `delay_s` after it is ready; the name it was registering."""
    proc = subprocess.Popen(
        [sys.executable, "-c", REGISTER_FOREVER, str(root), str(first), *map(str, sources)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready and proc.stdout.readline().strip() == "ready", proc.stderr.read()  # type: ignore[union-attr]
        time.sleep(delay_s)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        names = proc.stdout.read().split()  # type: ignore[union-attr]
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    return names[-1] if names else None


def assert_consistent(root: Path, versions: set[tuple[bytes, bytes]]) -> list[str]:
    """Everything a fresh store shows is a complete adapter of one version; the rest is hidden leftovers."""
    store = AdapterStore(root)
    listed = store.list()
    names = [adapter.name for adapter in listed]
    entries = os.listdir(root)
    assert sorted(n for n in entries if not n.startswith(".")) == names  # no partial folder under a real name
    hidden = [n for n in entries if n.startswith(".")]
    assert all(n == ".lock" or n.startswith(LEFTOVER_PREFIXES) for n in hidden), hidden
    assert store.versions().keys() == set(names)
    for adapter in listed:
        assert adapter.usable, (adapter.name, adapter.error)
        assert adapter.manifest is not None and adapter.manifest.name == adapter.name
        assert sorted(os.listdir(adapter.path)) == sorted(
            [CONFIG_FILENAME, WEIGHTS_FILENAME, MANIFEST_FILENAME]
        )
        assert peft_bytes(adapter.path) in versions, f"{adapter.name} mixes two versions or is truncated"
        assert store.load_files(adapter.name).tensor_shapes  # header, config and finite weights check out
        assert load_file(str(adapter.path / WEIGHTS_FILENAME))  # and the safetensors library reads it
    return names


def test_kill_9_at_random_moments_leaves_every_adapter_complete_or_absent(tmp_path: Path) -> None:
    sources = [
        write_peft_folder(tmp_path / "v1", rank=8, seed=1),
        write_peft_folder(tmp_path / "v2", rank=16, seed=2),
    ]
    versions = {peft_bytes(source) for source in sources}
    root = tmp_path / "store"
    store = AdapterStore(root)
    store.register("keep", sources[0])  # an adapter nobody touches must survive every crash
    rng = random.Random(7)
    overwritten_once = False
    for cycle in range(KILLS):
        in_flight = register_and_kill(root, cycle * 1_000_000, sources, rng.uniform(0.0, MAX_DELAY_S))
        names = assert_consistent(root, versions)
        assert "keep" in names
        if overwritten_once:
            assert OVERWRITTEN in names  # an overwrite swaps in one step: the name is never lost
        if in_flight is not None:  # the interrupted name registers again, whatever state the kill left
            store.register(in_flight, sources[1], overwrite=in_flight in names)
            assert peft_bytes(root / in_flight) == peft_bytes(sources[1])
            names = assert_consistent(root, versions)
        overwritten_once = OVERWRITTEN in names

    store.cleanup_stale(older_than_s=0)
    names = assert_consistent(root, versions)
    assert sorted(os.listdir(root)) == sorted([".lock", *names])  # every leftover is gone
