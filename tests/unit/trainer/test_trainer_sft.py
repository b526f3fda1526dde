"""The CPU loss (trained positions only) equals the model's own causal-LM loss, and TRL's."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def setup(tiny_base: Path, tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig

    from hotlora_trainer.data import Row
    from hotlora_trainer.encoding import encode_row

    rows = [
        {
            "messages": [
                {"role": "user", "content": "The birch canoe."},
                {"role": "assistant", "content": "ethay irchbay."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "ihay, owhay areway ouyay?"},
            ]
        },
    ]
    encoded = [encode_row(tokenizer, "messages", Row(i, r)) for i, r in enumerate(rows)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(tiny_base),
            LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
        )
    dataset = datasets.Dataset.from_dict(
        {"input_ids": [e.input_ids for e in encoded], "labels": [e.labels for e in encoded]}
    )
    args = SFTConfig(
        output_dir=str(tmp_path_factory.mktemp("sft")),
        use_cpu=True,
        bf16=False,
        report_to="none",
        activation_checkpointing=False,
        per_device_train_batch_size=2,
    )
    return model, dataset, args, tokenizer


def test_compact_loss_matches_the_models_loss(setup: Any) -> None:
    import torch

    from hotlora_trainer.sft import CompactLossSFTTrainer, compact_loss_supported

    model, dataset, args, tokenizer = setup
    assert compact_loss_supported(model)
    trainer = CompactLossSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    batch = trainer.data_collator([dataset[0], dataset[1]])
    assert (batch["labels"] == -100).any()  # prompt and padding positions are masked
    with torch.no_grad():
        expected = model(**batch).loss  # transformers' own shifted cross-entropy over every position
        compact = trainer.compute_loss(model, dict(batch))
        trained = int((batch["labels"][:, 1:] != -100).sum())
        summed = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(trained))
    assert torch.allclose(compact, expected, atol=1e-5), (compact, expected)
    assert torch.allclose(summed, expected, atol=1e-5)
    # and the gradient reaches the LoRA weights
    model.zero_grad()
    trainer.compute_loss(model, dict(batch)).backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n
    )
