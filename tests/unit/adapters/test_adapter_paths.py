from pathlib import Path

from hotlora_adapters import default_store_dir


def test_hotlora_home_wins(tmp_path: Path) -> None:
    assert default_store_dir({"HOTLORA_HOME": str(tmp_path)}) == tmp_path / "adapters"


def test_default_under_home() -> None:
    assert default_store_dir({"HOME": "/home/u"}) == Path("/home/u/.local/share/hotlora/adapters")


def test_empty_hotlora_home_means_default_and_tilde_expands() -> None:
    assert default_store_dir({"HOME": "/h", "HOTLORA_HOME": ""}) == Path("/h/.local/share/hotlora/adapters")
    assert default_store_dir({"HOME": "/h", "HOTLORA_HOME": "~/hl"}) == Path("/h/hl/adapters")
