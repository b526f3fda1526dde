"""OpenAI's fine-tuning API: files (`/v1/files`) and jobs (`/v1/fine_tuning/jobs`), plus hotlora's options.

A job's body is OpenAI's — `model` (the served base), `training_file`, `validation_file`, `suffix`, `seed`,
`metadata`, and the hyperparameters `n_epochs`, `batch_size`, `learning_rate_multiplier` at the top level
(the older form) or under `method: {"type": "supervised", "supervised": {"hyperparameters": ...}}` — and
hotlora's training options under the extension field `hotlora`, by PEFT's and TRL's names. Unknown
fields of OpenAI's body are accepted and logged; unknown options under `hotlora` are refused, as they would
reach the trainer.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from .common import ModelId, _Lenient, _Open

Auto = Literal["auto"]
FileId = Annotated[str, Field(min_length=1, max_length=128)]
MAX_SUFFIX = 40  # `ft-<suffix>-<8 hex>` stays within an adapter name's 64 characters
Suffix = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=MAX_SUFFIX)]
ModuleName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+$", max_length=128)]
MetadataKey = Annotated[str, Field(min_length=1, max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)]
JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]


class Hyperparameters(_Open):
    """OpenAI's supervised hyperparameters; "auto" is the trainer's default."""

    n_epochs: Auto | Annotated[int, Field(ge=1, le=100)] = "auto"
    batch_size: Auto | Annotated[int, Field(ge=1, le=1024)] = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=100)] = "auto"


class SupervisedMethod(_Open):
    hyperparameters: Hyperparameters = Hyperparameters()


class Method(_Open):
    type: Literal["supervised"] = Field(description="hotlora trains supervised (SFT) LoRA adapters only")
    supervised: SupervisedMethod = SupervisedMethod()


class TrainingOptions(BaseModel):
    """hotlora's options (the `hotlora` field): `hotlora train`'s, by PEFT's `LoraConfig` and TRL's
    `SFTConfig` names. Left out: the trainer's default."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")

    r: Annotated[int, Field(ge=1)] | None = None
    lora_alpha: Annotated[int, Field(ge=1)] | None = None
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] | None = None
    target_modules: Annotated[list[ModuleName], Field(min_length=1, max_length=64)] | None = None
    bias: Literal["none", "all", "lora_only"] | None = None
    use_rslora: bool | None = None
    init_lora_weights: Literal["default", "gaussian", "pissa", "olora"] | None = None
    max_steps: Annotated[int, Field(ge=1)] | None = None
    max_length: Annotated[int, Field(ge=8, le=1 << 20)] | None = None
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] | None = None
    packing: bool | None = None
    qlora: bool | None = None
    optim: Literal["adamw_torch", "adamw_8bit", "paged_adamw_8bit"] | None = None
    gradient_checkpointing: bool | None = None
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] | None = None
    warmup_steps: Annotated[float, Field(ge=0)] | None = None
    weight_decay: Annotated[float, Field(ge=0)] | None = None
    eval_split: Annotated[float, Field(gt=0, lt=1)] | None = None
    logging_steps: Annotated[int, Field(ge=1)] | None = None

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class JobCreateRequest(_Lenient):
    model: ModelId
    training_file: FileId
    validation_file: FileId | None = None
    suffix: Suffix | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    metadata: Metadata | None = None
    hotlora: TrainingOptions = TrainingOptions()

    @model_validator(mode="after")
    def _one_place(self) -> JobCreateRequest:
        if self.hyperparameters is not None and self.method is not None:
            raise ValueError("give the hyperparameters in `method` or at the top level, not both")
        if self.validation_file is not None and self.hotlora.eval_split is not None:
            raise ValueError(
                "`hotlora.eval_split` holds out rows for evaluation: not with a `validation_file`"
            )
        return self

    def resolved_hyperparameters(self) -> Hyperparameters:
        if self.method is not None:
            return self.method.supervised.hyperparameters
        return self.hyperparameters or Hyperparameters()


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["fine-tune"]
    status: Literal["processed"] = "processed"  # checked when it was uploaded
    status_details: str | None = None
    expires_at: int | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class _Page(BaseModel):
    object: Literal["list"] = "list"
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FileList(_Page):
    data: list[FileObject]


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None  # the adapter's name, servable once the job has succeeded
    finished_at: int | None = None
    hyperparameters: Hyperparameters
    method: Method
    model: str
    organization_id: str = "hotlora"
    result_files: list[str] = []
    seed: int
    status: JobStatus
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[Any] = []
    metadata: dict[str, str] | None = None
    user_provided_suffix: str | None = None
    hotlora: dict[str, Any] = {}  # the training options it was given


class JobList(_Page):
    data: list[FineTuningJob]


class JobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None = None


class JobEventList(_Page):
    data: list[JobEvent]


class CheckpointMetrics(BaseModel):
    step: float | None = None
    train_loss: float | None = None
    valid_loss: float | None = None


class JobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class JobCheckpointList(_Page):
    data: list[JobCheckpoint]
