"""The layer rules of DESIGN.md: import-linter contracts (pyproject.toml) and a torch-free import check.

- server and trainer never import each other; the adapter package imports neither;
- the server imports neither the client nor the trainer, and no part imports the front door (`hotlora_cli`);
- the server's protocol/api/types/tools/errors/settings/metrics/logs and the adapter registry import no model
  stack (the registry: all of hotlora_adapters but its `runtime`, which no registry module imports);
- and, at run time, those modules import with torch & co. made unimportable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMPORTLINTER = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
CONTRACTS = {contract["id"]: contract for contract in IMPORTLINTER.get("contracts", [])}

MODEL_STACK = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")
TORCH_FREE_MODULES = (
    "hotlora_server.protocol",
    "hotlora_server.api",
    "hotlora_server.types",
    "hotlora_server.tools",
    "hotlora_server.blend_methods",
    "hotlora_server.errors",
    "hotlora_server.metrics",
    "hotlora_server.logs",
    "hotlora_server.web",
    "hotlora_server.vllm.engine",  # the vLLM engine: the model is in vLLM's process
    "hotlora_adapters",
    "hotlora_client",
    "hotlora_client.terminal",
    "hotlora_cli.main",  # `hotlora --help` and the parsing of every subcommand
)


def lint_imports_binary() -> str:
    beside = Path(sys.executable).parent / ("lint-imports.exe" if os.name == "nt" else "lint-imports")
    found = str(beside) if beside.is_file() else shutil.which("lint-imports")
    if not found:
        pytest.fail(
            "lint-imports not found: install the test extra (`pip install -e '.[test]'`, import-linter)"
        )
    return found


def test_import_contracts_are_kept() -> None:
    result = subprocess.run(
        [lint_imports_binary(), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"lint-imports failed:\n{result.stdout}\n{result.stderr}"


def test_the_contracts_say_what_the_design_says() -> None:
    # lint-imports passes on a weakened contract too; pin down the rules themselves.
    assert IMPORTLINTER.get("include_external_packages") is True, "needed to forbid torch & co."
    roots = {"hotlora_server", "hotlora_adapters", "hotlora_trainer", "hotlora_client", "hotlora_cli"}
    assert set(IMPORTLINTER["root_packages"]) >= roots

    independent = CONTRACTS["server-trainer-independent"]
    assert independent["type"] == "independence"
    assert set(independent["modules"]) == {"hotlora_server", "hotlora_trainer"}

    for contract_id, sources, forbidden in (
        ("adapters-below-server-and-trainer", {"hotlora_adapters"}, {"hotlora_server", "hotlora_trainer"}),
        (
            "server-imports-neither-client-nor-trainer",
            {"hotlora_server"},
            {"hotlora_client", "hotlora_trainer"},
        ),
        ("front-door-above-the-parts", roots - {"hotlora_cli"}, {"hotlora_cli"}),
        (
            "server-http-layer-torch-free",
            {
                f"hotlora_server.{m}"
                for m in (
                    "protocol",
                    "api",
                    "types",
                    "tools",
                    "blend_methods",
                    "errors",
                    "settings",
                    "metrics",
                    "logs",
                )
            },
            set(MODEL_STACK) | {"hotlora_server.engine"},
        ),
        ("adapter-registry-torch-free", {"hotlora_adapters"}, {"torch", "transformers", "peft"}),
        ("adapter-registry-below-runtime", {"hotlora_adapters.*"}, {"hotlora_adapters.runtime"}),
        ("adapter-package-init-torch-free", {"hotlora_adapters"}, {"torch", "transformers", "peft"}),
        (
            "client-speaks-only-http",
            {"hotlora_client"},
            {"hotlora_server", "hotlora_adapters", "hotlora_trainer"} | set(MODEL_STACK),
        ),
    ):
        contract = CONTRACTS[contract_id]
        assert contract["type"] == "forbidden", contract_id
        assert sources <= set(contract["source_modules"]), contract_id
        assert forbidden <= set(contract["forbidden_modules"]), contract_id
        assert not contract.get("allow_indirect_imports"), f"{contract_id}: indirect imports count too"
        # the one reasoned exception: the runtime (the base model) may import the model stack
        excused = {line.partition(" -> ")[0] for line in contract.get("ignore_imports", [])}
        assert excused <= {"hotlora_adapters.runtime.**"}, f"{contract_id}: no exceptions without a reason"


BLOCKING_IMPORTER = """
import importlib, sys

BLOCKED = set(sys.argv[2].split(","))

class BlockModelStack:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is blocked: this module must import without the model stack")
        return None

sys.meta_path.insert(0, BlockModelStack())
importlib.import_module(sys.argv[1])
leaked = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
assert not leaked, f"imported anyway: {leaked}"
"""


@pytest.mark.parametrize("module", TORCH_FREE_MODULES)
def test_imports_without_the_model_stack(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKING_IMPORTER, module, ",".join(MODEL_STACK)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (
        f"`import {module}` with {', '.join(MODEL_STACK)} blocked:\n{result.stderr}"
    )


def test_the_blocker_blocks() -> None:
    # The check above is only worth something if importing torch really fails under it.
    result = subprocess.run(
        [sys.executable, "-c", BLOCKING_IMPORTER, "torch.nn", ",".join(MODEL_STACK)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0, "torch imported although blocked"
    assert "is blocked" in result.stderr, result.stderr
