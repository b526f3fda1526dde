"""hotlora's adapter registry: names, the on-disk store, PEFT file validation and base compatibility.

Torch-free by contract (stdlib + pydantic), so the HTTP layer, the CLI and the trainer's bookkeeping can
use it without loading a model. The base model, which needs torch, is `hotlora_adapters.runtime`'s; no
registry module imports it.
"""

from .chat_templates import ChatTemplateError, resolve_chat_template
from .compat import BaseSpec, check_compatible, find_mismatches
from .errors import (
    AdapterError,
    AdapterExistsError,
    AdapterNotFoundError,
    AdapterPathError,
    IncompatibleAdapterError,
    InvalidAdapterError,
    InvalidAdapterNameError,
)
from .finite import check_finite, nonfinite_tensors
from .manifest import MANIFEST_FILENAME, AdapterSource, BlendSource, Manifest, manifest_json, read_manifest
from .names import ADAPTER_NAME_PATTERN, is_valid_adapter_name, validate_adapter_name
from .paths import default_home_dir, default_store_dir
from .patterns import Pattern, UnsafePattern, compile_pattern
from .peft_config import CONFIG_FILENAME, AdapterConfig, read_adapter_config
from .peft_files import WEIGHTS_FILENAME, AdapterFiles, inspect_adapter, read_tensor_shapes
from .safetensors_header import SafetensorsHeader, TensorInfo, read_safetensors_header
from .store import AdapterStore, StoredAdapter
from .targets import is_targeted, peft_lora_kwargs, targeted_modules
from .training_log import TRAINING_LOG_FILENAME, read_training_log
from .versions import adapter_version
from .watch import StoreChange, StoreWatcher

__all__ = [
    "ADAPTER_NAME_PATTERN",
    "CONFIG_FILENAME",
    "MANIFEST_FILENAME",
    "TRAINING_LOG_FILENAME",
    "WEIGHTS_FILENAME",
    "AdapterConfig",
    "AdapterError",
    "AdapterExistsError",
    "AdapterFiles",
    "AdapterNotFoundError",
    "AdapterPathError",
    "AdapterSource",
    "AdapterStore",
    "BaseSpec",
    "BlendSource",
    "ChatTemplateError",
    "IncompatibleAdapterError",
    "InvalidAdapterError",
    "InvalidAdapterNameError",
    "Manifest",
    "Pattern",
    "SafetensorsHeader",
    "StoreChange",
    "StoreWatcher",
    "StoredAdapter",
    "TensorInfo",
    "UnsafePattern",
    "adapter_version",
    "check_compatible",
    "check_finite",
    "compile_pattern",
    "default_home_dir",
    "default_store_dir",
    "find_mismatches",
    "inspect_adapter",
    "is_targeted",
    "is_valid_adapter_name",
    "manifest_json",
    "nonfinite_tensors",
    "peft_lora_kwargs",
    "read_adapter_config",
    "read_manifest",
    "read_safetensors_header",
    "read_tensor_shapes",
    "read_training_log",
    "resolve_chat_template",
    "targeted_modules",
    "validate_adapter_name",
]
