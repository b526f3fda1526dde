import pytest

from hotlora_adapters import (
    ADAPTER_NAME_PATTERN,
    InvalidAdapterNameError,
    is_valid_adapter_name,
    validate_adapter_name,
)


@pytest.mark.parametrize("name", ["piglatin", "a.b-c_1", "0", "yoda-v2.1", "a" * 64, "x_"])
def test_accepted(name: str) -> None:
    assert validate_adapter_name(name) == name
    assert is_valid_adapter_name(name)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "empty"),
        ("A", "uppercase"),
        ("PigLatin", "uppercase"),
        ("../x", "path separator"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("a\x00", "NUL"),
        ("a" * 65, "65 characters"),
        (".hidden", "starts with '.'"),
        ("a..b", "'..'"),
        ("..", "'..'"),
        ("_base", "starts with '_'"),
        ("-x", "starts with '-'"),
        ("a b", "' '"),
        ("a\n", "'\\n'"),
        ("a*0.5+b", "'*'"),
        ("é", "starts with 'é'"),
    ],
)
def test_refused_with_reason_and_rule(name: str, problem: str) -> None:
    with pytest.raises(InvalidAdapterNameError) as info:
        validate_adapter_name(name)
    message = str(info.value)
    assert problem in message
    assert "1 to 64 characters of lowercase letters" in message  # the rule is always stated
    assert not is_valid_adapter_name(name)


def test_a_hostile_length_is_not_echoed_in_full() -> None:
    with pytest.raises(InvalidAdapterNameError) as info:
        validate_adapter_name("a" * 1000)
    message = str(info.value)
    assert "it is 1000 characters long" in message and len(message) < 300


def test_is_a_value_error_and_non_strings_refused() -> None:
    assert issubclass(InvalidAdapterNameError, ValueError)
    with pytest.raises(InvalidAdapterNameError, match="must be a string"):
        validate_adapter_name(None)  # type: ignore[arg-type]
    assert not is_valid_adapter_name(3)


def test_pattern_is_the_documented_one() -> None:
    assert ADAPTER_NAME_PATTERN == r"[a-z0-9][a-z0-9._-]{0,63}"
