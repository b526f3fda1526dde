"""`--chat-template` for a model without one, in the server and the trainer alike (the course's ChatML)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hotlora_adapters import AdapterStore, ChatTemplateError, resolve_chat_template
from hotlora_adapters.chat_templates import CHATML
from hotlora_server.engine.loader import ModelLoadError, load_model
from hotlora_server.engine.prompts import chat_prompt_text
from hotlora_server.errors import InvalidRequestError

from support.tiny_server import TINY_NAME, running_engine, tiny_settings

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def templateless(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory, real_tokenizer: Any) -> Path:
    """The tiny llama with a tokenizer that has no chat template (as many base models ship)."""
    import shutil

    folder = tmp_path_factory.mktemp("templateless")
    shutil.copytree(tiny_dir, folder, dirs_exist_ok=True)
    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink(missing_ok=True)
    tokenizer = real_tokenizer.__class__.from_pretrained(folder)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(folder)
    return folder


def test_resolution_built_in_file_or_inline(tmp_path: Path) -> None:
    assert resolve_chat_template("chatml") == CHATML
    (tmp_path / "t.jinja").write_text("{{ messages[0]['content'] }}")
    assert resolve_chat_template(str(tmp_path / "t.jinja")) == "{{ messages[0]['content'] }}"
    assert resolve_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}").startswith("{%")
    with pytest.raises(ChatTemplateError, match="chatml"):
        resolve_chat_template(str(tmp_path / "missing.jinja"))


def test_without_a_template_chat_says_how_to_get_one(templateless: Path, tmp_path: Path) -> None:
    loaded = load_model(tiny_settings(templateless, tmp_path, tmp_path / "store"))
    assert loaded.tokenizer.chat_template is None
    with pytest.raises(InvalidRequestError, match="--chat-template chatml"):
        chat_prompt_text(loaded.tokenizer, MESSAGES)
    with pytest.raises(ModelLoadError, match="not a built-in name"):
        load_model(
            tiny_settings(templateless, tmp_path, tmp_path / "store", chat_template=str(tmp_path / "nope"))
        )


def test_chatml_renders_the_courses_format_and_the_trainer_uses_the_same(
    templateless: Path, tmp_path: Path, real_tokenizer: Any
) -> None:
    from hotlora_trainer import TrainConfig, train
    from hotlora_trainer.errors import ConfigError

    settings = tiny_settings(templateless, tmp_path / "home", tmp_path / "store", chat_template="chatml")
    loaded = load_model(settings)
    assert (
        chat_prompt_text(loaded.tokenizer, MESSAGES)
        == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )

    data = tmp_path / "d.jsonl"
    data.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ih"}]}\n' * 4
    )
    fields: dict[str, Any] = dict(
        name="chatml-bot",
        data=data,
        base=str(templateless),
        home=tmp_path / "home",
        adapters_dir=tmp_path / "store",
        device="cpu",
        r=2,
        max_steps=1,
        per_device_train_batch_size=2,
    )
    with pytest.raises(ConfigError, match="--chat-template chatml"):
        train(TrainConfig(**fields), out=lambda _line: None, progress_bar=False, env={})
    result = train(
        TrainConfig(**fields, chat_template="chatml"), out=lambda _line: None, progress_bar=False, env={}
    )
    assert result.manifest.model_dump()["recipe"]["chat_template"] == "chatml"
    assert AdapterStore(tmp_path / "store").get("chatml-bot").usable
    with running_engine(settings) as engine:
        assert {"chatml-bot", TINY_NAME} <= {m.id for m in asyncio.run(engine.list_models())}
