"""Fixtures for the trainer's unit tests: the real SmolLM2 tokenizer, a tiny random llama beside it.

Label masks are checked with the real tokenizer and chat template; training runs use a tiny random llama
(hidden size 64, two layers) saved with that tokenizer, so a few steps take a second or two on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from support.tiny_llama import build_tiny_llama, special_tokens


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """A tiny random llama saved as an HF folder together with the real SmolLM2 tokenizer."""
    from transformers import GenerationConfig

    folder = tmp_path_factory.mktemp("tiny-base")
    tokens = special_tokens(tokenizer)
    model = build_tiny_llama(
        vocab_size=len(tokenizer), max_position_embeddings=256, tie_word_embeddings=True, **tokens
    )
    model.generation_config = GenerationConfig(**tokens)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
