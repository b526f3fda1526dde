"""`TrainConfig`: everything one training run is told, in one typed object.

LoRA fields carry PEFT's `LoraConfig` names and training fields TRL's `SFTConfig` (transformers'
`TrainingArguments`) names, so the manifest records each hyperparameter under the name its library uses.
The command line maps its options onto these fields (`--epochs` -> `num_train_epochs`, `--batch-size` ->
`per_device_train_batch_size`, `--grad-accum` -> `gradient_accumulation_steps`, `--max-seq-length` ->
`max_length`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hotlora_adapters import InvalidAdapterNameError, validate_adapter_name
from hotlora_adapters.runtime.placement import Device

Task = Literal["piglatin"]
InitLoraWeights = bool | Literal["gaussian", "pissa", "olora", "loftq"]
OPTIMIZERS = ("adamw_torch", "adamw_8bit", "paged_adamw_8bit")
# The Pig Latin recipe: a higher learning rate than the generic 2e-4 and rank 64 learned the conversion
# best on lists 61-72; 0.9 epochs of the task's 3000 rows (the real sentences and made-up ones, see
# piglatin.py), as many steps as 4.5 epochs of the real sentences, does better than those and fits the
# task's time goal on a 2-core CPU. The runs behind each choice: docs/performance.md, "Training".
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "piglatin": {
        "learning_rate": 2e-3,
        "num_train_epochs": 0.9,
        "per_device_train_batch_size": 8,
        "r": 64,
        "lora_alpha": 128,
        "max_length": 128,
    },
}


class TrainConfig(BaseModel):
    """One training run. Exactly one of `data` (a JSONL file) and `task` (a built-in task)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="the adapter's name in the store")
    data: Path | None = Field(None, description="JSONL file in one of TRL's formats")
    task: Task | None = Field(None, description="a built-in task instead of a file")
    base: str | None = Field(None, description="HF folder, .gguf file or hub id; None: the embedded SmolLM2")

    # PEFT LoraConfig
    r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str = "all-linear"
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False
    init_lora_weights: InitLoraWeights = True
    modules_to_save: list[str] | None = None

    # TRL SFTConfig / transformers TrainingArguments
    num_train_epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, description="> 0 overrides num_train_epochs")
    learning_rate: float = Field(2e-4, gt=0)
    per_device_train_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(512, ge=8)
    packing: bool = False
    optim: Literal["adamw_torch", "adamw_8bit", "paged_adamw_8bit"] = "adamw_torch"
    gradient_checkpointing: bool = False
    lr_scheduler_type: str = "linear"
    warmup_steps: float = Field(0.0, ge=0, description="a count, or a fraction of all steps when < 1")
    weight_decay: float = Field(0.0, ge=0)
    logging_steps: int | None = Field(None, ge=1, description="None: about 50 points on the loss curve")
    save_steps: int = Field(100, ge=1, description="checkpoint every this many steps (for --resume)")
    seed: int = 42
    eval_split: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of the file held out for eval_loss")
    eval_data: Path | None = Field(None, description="a JSONL file of evaluation rows, in the data's format")
    resume: bool = False
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    bf16: bool | None = Field(
        None, description="bfloat16 autocast; None: on CUDA, and on CPUs with native bf16 (AVX512-BF16, AMX)"
    )
    chat_template: str | None = Field(
        None, description="chatml, a Jinja file, or a template: the server's flag"
    )

    # hotlora
    qlora: bool = Field(True, description="train on the 4-bit NF4 base, as `hotlora serve` serves it")
    device: Device = "auto"
    torch_threads: int | None = Field(None, ge=1, description="CPU threads; None: one per idle core")
    home: Path | None = None
    adapters_dir: Path | None = None
    server: str | None = None
    overwrite: bool = False
    estimate_only: bool = False
    eval_max_new_tokens: int = Field(96, ge=1, description="generation budget per evaluation sentence (task)")

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        """A built-in task brings its own recipe; fields given explicitly win."""
        if isinstance(data, dict) and data.get("task") in TASK_DEFAULTS:
            return {**TASK_DEFAULTS[data["task"]], **{k: v for k, v in data.items() if v is not None}}
        return data

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        try:
            return validate_adapter_name(value)
        except InvalidAdapterNameError as e:
            raise ValueError(str(e)) from None

    @field_validator("target_modules", "modules_to_save", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        """Accept "q_proj,v_proj" as well as a list; "all-linear" stays PEFT's keyword."""
        if isinstance(value, str) and value != "all-linear" and "," in value:
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list | tuple):
            names = [str(n).strip() for v in value for n in str(v).split(",") if str(n).strip()]
            if names == ["all-linear"]:
                return "all-linear"
            return names
        return value

    @field_validator("init_lora_weights", mode="before")
    @classmethod
    def _init_name(cls, value: Any) -> Any:
        return True if value == "default" else value

    @field_validator("server")
    @classmethod
    def _server_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"--server must be an http(s) URL like http://127.0.0.1:8000, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if (self.data is None) == (self.task is None):
            raise ValueError("give exactly one of --data FILE.jsonl and --task piglatin")
        if self.eval_data is not None and (self.task is not None or self.eval_split):
            raise ValueError("--eval-data goes with --data, without --eval-split (it replaces the split)")
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("--target-modules is empty")
        if self.init_lora_weights == "loftq":
            raise ValueError(
                "--init-lora-weights loftq trains the adapter against a base it rewrites (quantized with the "
                "adapter's start taken out), but a hotlora server serves every adapter on the one unmodified "
                "base: use default or gaussian initialization (training on the served 4-bit base is the default)"
            )
        if self.init_lora_weights in ("pissa", "olora") and self.qlora:
            raise ValueError(
                f"--init-lora-weights {self.init_lora_weights} rewrites the base weights and is not supported "
                "on the 4-bit base (--qlora, the default): add --no-qlora or use default/gaussian initialization"
            )
        return self

    # -- views under the libraries' names ---------------------------------------------------------

    def lora_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `peft.LoraConfig` (task_type added by the caller)."""
        return {
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": self.target_modules,
            "bias": self.bias,
            "use_rslora": self.use_rslora,
            "init_lora_weights": self.init_lora_weights,
            "modules_to_save": self.modules_to_save,
        }

    def sft_kwargs(self) -> dict[str, Any]:
        """The hyperparameters of `trl.SFTConfig` this run sets (not paths, logging or device plumbing)."""
        return {
            "num_train_epochs": self.num_train_epochs,
            "max_steps": self.max_steps,
            "learning_rate": self.learning_rate,
            "per_device_train_batch_size": self.per_device_train_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "max_length": self.max_length,
            "packing": self.packing,
            "optim": self.optim,
            "gradient_checkpointing": self.gradient_checkpointing,
            "lr_scheduler_type": self.lr_scheduler_type,
            "warmup_steps": self.warmup_steps,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
        }

    def recipe(self) -> dict[str, Any]:
        """Every hyperparameter under its PEFT/TRL name, for the manifest."""
        out: dict[str, Any] = {**self.lora_kwargs(), **self.sft_kwargs()}
        out["eval_split"] = self.eval_split
        out["attn_implementation"] = self.attn_implementation
        if self.chat_template is not None:
            out["chat_template"] = self.chat_template
        out["qlora"] = self.qlora
        if self.qlora:
            out.update(load_in_4bit=True, bnb_4bit_quant_type="nf4")
        if self.task is not None:
            out["task"] = self.task
        return out
