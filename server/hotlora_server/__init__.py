"""hotlora inference server: one base model in memory, many LoRA adapters on top, OpenAI's wire format."""

__version__ = "0.1.0"
