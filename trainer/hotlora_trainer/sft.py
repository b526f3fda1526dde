"""TRL's SFTTrainer, with the loss computed only where a label is trained when running on a CPU.

On CUDA, TRL's fused LM head (a Triton kernel) computes log-probabilities for the trained positions only.
On a CPU it has no kernel and projects every position through the whole vocabulary in tiles. In chat
data most positions are prompt (-100): for the Pig Latin task 64% of them, and the projection to
SmolLM2's 49,152-token vocabulary is a fifth of the model's work. `CompactLossSFTTrainer` runs the
backbone, keeps the hidden states of trained positions, and projects and scores only those — the same
loss (sum over trained tokens / number of trained tokens, or `num_items_in_batch` under accumulation).
"""

from __future__ import annotations

from typing import Any

from trl import SFTTrainer

IGNORE_INDEX = -100
# config attributes that change the logits beyond `lm_head(hidden)`: leave such models to TRL
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


def compact_loss_supported(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.get_text_config()
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return False
    return hasattr(base, base.base_model_prefix) and base.get_output_embeddings() is not None


class CompactLossSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss projects only the trained positions to the vocabulary (see the module doc)."""

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        import torch
        import torch.nn.functional as F

        mode = "train" if self.model.training else "eval"  # type: ignore[union-attr]  # set while training
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        backbone = getattr(base, base.base_model_prefix)
        labels = inputs["labels"]
        model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "seq_lengths")}
        hidden = backbone(**model_inputs, use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        mask = targets != IGNORE_INDEX
        logits = base.get_output_embeddings()(hidden[:, :-1][mask]).float()
        wanted = targets[mask]
        total = F.cross_entropy(logits, wanted, reduction="sum")
        count = mask.sum()
        denominator = num_items_in_batch if num_items_in_batch is not None else count.clamp(min=1)
        loss = total / torch.as_tensor(denominator, device=total.device)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        with torch.no_grad():
            correct = (logits.argmax(-1) == wanted).sum()
            n = max(int(count), 1)
            self._metrics[mode]["mean_token_accuracy"].append(float(correct) / n)
            if mode == "train" and "attention_mask" in inputs:
                self._total_train_tokens += int(inputs["attention_mask"].sum())
                self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, {"loss": loss}) if return_outputs else loss
