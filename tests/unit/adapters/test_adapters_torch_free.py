"""The registry must import and work where torch cannot (the HTTP layer, the client machine)."""

import os
import subprocess
import sys
from pathlib import Path

import hotlora_adapters

SCRIPT = """
import sys
for blocked in ("torch", "numpy", "safetensors", "peft", "transformers"):
    sys.modules[blocked] = None
import hotlora_adapters as h
store = h.AdapterStore(h.default_store_dir({"HOTLORA_HOME": sys.argv[1]}))
[adapter] = store.list()
assert adapter.error is None, adapter.error
files = store.load_files(adapter.name)
base = h.BaseSpec("llama", {"model.q": (8, 4)})
h.check_compatible(files, base)
# the write side and the change feed are torch-free too
watcher = h.StoreWatcher(store)
assert [c.kind for c in watcher.poll()] == ["added"]
copy = store.register("copy", adapter.path, base=base)
assert copy.usable and copy.manifest.base_fingerprint == base.fingerprint(), copy
assert store.set_disabled("copy", True).disabled
store.delete("copy")
assert [(c.kind, c.name) for c in watcher.poll()] == []  # added and removed between two looks
print("ok", adapter.name)
"""


def test_registry_works_without_torch(tmp_path: Path, safetensors_writer) -> None:
    adapter = tmp_path / "adapters" / "tiny"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "target_modules": ["q"]}')
    safetensors_writer(
        adapter / "adapter_model.safetensors",
        {
            "base_model.model.model.q.lora_A.weight": ("F32", [2, 4]),
            "base_model.model.model.q.lora_B.weight": ("F32", [8, 2]),
        },
    )
    package_parent = str(Path(hotlora_adapters.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": package_parent}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok tiny"
