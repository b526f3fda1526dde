"""Chat templates for models without one: the server and the trainer must render a conversation alike.

`--chat-template` takes `chatml` (the course's ChatML recipe, what SmolLM2 and Qwen use), a path to a
Jinja file, or the template itself (as vLLM's `--chat-template`); an adapter trained with a template is
served well only with the same one, so the trainer records it in the manifest's recipe.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
BUILT_IN = {"chatml": CHATML}
MAX_TEMPLATE_BYTES = 1 << 20


class ChatTemplateError(ValueError):
    """`--chat-template` names neither a built-in template, a readable file, nor a template."""


def resolve_chat_template(value: str) -> str:
    """The Jinja text `value` stands for: a built-in name, a file, or a template given inline."""
    if value in BUILT_IN:
        return BUILT_IN[value]
    if "{{" in value or "{%" in value:
        return value
    path = Path(value).expanduser()
    try:
        if path.stat().st_size > MAX_TEMPLATE_BYTES:
            raise ChatTemplateError(f"--chat-template {value}: larger than {MAX_TEMPLATE_BYTES} bytes")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ChatTemplateError(
            f"--chat-template {value!r}: not a built-in name ({', '.join(BUILT_IN)}), a readable Jinja file, "
            f"or a template ({type(e).__name__}: {e})"
        ) from None
