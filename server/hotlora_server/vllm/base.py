"""The base model vLLM serves, resolved as the built-in engine resolves it, without torch in this process.

`--model` is resolved (and the embedded GGUF converted, once) by `hotlora_adapters.runtime` in a short-lived
child of this interpreter, which has torch; this process then reads the folder's shapes from its files
(`base_spec_from_folder`), so the catalog judges adapters by the fingerprint the trainer recorded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hotlora_adapters import AdapterError, BaseSpec
from hotlora_adapters.base_files import base_spec_from_folder

from ..settings import Settings

_RESOLVE = """
import json, sys
from pathlib import Path
from hotlora_adapters.runtime.base_model import (
    EMBEDDED_GENERATION_DEFAULTS, EMBEDDED_MODEL_NAME, BaseModelError, resolve_base
)
try:
    r = resolve_base(sys.argv[1] or None, Path(sys.argv[2]), "--model")
except BaseModelError as exc:
    sys.exit(str(exc))
embedded = (sys.argv[1] or None) in (None, EMBEDDED_MODEL_NAME)
print(json.dumps([r.name, str(r.source), EMBEDDED_GENERATION_DEFAULTS if embedded else {}]))
"""


class BaseResolutionError(RuntimeError):
    """`--model` names nothing vLLM can be given; the message says why."""


@dataclass(frozen=True)
class VllmBase:
    """`name`: the served id; `folder`: what vLLM loads; `spec`: what adapters are judged by;
    `card_defaults`: sampling defaults the model's files do not carry (the embedded model's card's, which
    the built-in engine applies too under `--generation-config auto`)."""

    name: str
    folder: Path
    spec: BaseSpec
    card_defaults: dict[str, float] = field(default_factory=dict)


def resolve_vllm_base(settings: Settings) -> VllmBase:
    done = subprocess.run(
        [sys.executable, "-c", _RESOLVE, settings.model or "", str(settings.models_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BaseResolutionError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed")
    name, source, card_defaults = json.loads(done.stdout.strip().splitlines()[-1])
    folder = Path(source)
    if not folder.is_dir():
        raise BaseResolutionError(
            f"--engine vllm needs a local model folder or .gguf file (hotlora reads the base's shapes from "
            f"its files to judge adapters); {source} is not one: download it first"
        )
    try:
        spec = base_spec_from_folder(folder)
    except AdapterError as exc:
        raise BaseResolutionError(str(exc)) from None
    return VllmBase(settings.served_model_name or name, folder, spec, card_defaults)
