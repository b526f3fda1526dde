"""hotlora's trainer: a JSONL dataset in, a registered LoRA adapter out (see the trainer issue)."""
