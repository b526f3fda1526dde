"""`hotlora chat`: it runs the client's terminal chat, imports the client only when asked,
and says what to install when the client is missing."""

from __future__ import annotations

import subprocess
import sys


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_hotlora_chat_is_the_terminal_chat() -> None:
    result = run("import sys; from hotlora_cli.main import main; sys.exit(main(['chat', '--help']))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: hotlora chat") and "--base-url" in result.stdout
    listed = run("import sys; from hotlora_cli.main import main; sys.exit(main(['--help']))")
    assert "chat" in listed.stdout


def test_the_front_door_imports_the_client_and_the_trainer_only_when_asked() -> None:
    result = run(
        "import sys, hotlora_cli.main; "
        "assert not {'hotlora_client', 'hotlora_trainer'} & set(sys.modules), 'imported'"
    )
    assert result.returncode == 0, result.stderr


def test_without_the_client_installed_it_says_what_to_install() -> None:
    hidden = "import sys; sys.modules['hotlora_client'] = None"  # `import hotlora_client` now fails
    result = run(f"{hidden}; from hotlora_cli.main import main; sys.exit(main(['chat']))")
    assert result.returncode == 1
    assert "pip install ./clients/python" in result.stderr and "Traceback" not in result.stderr
