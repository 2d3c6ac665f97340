import pytest

from qlass.errors import ActionParseError
from qlass.parsing import candidate_from_text, format_turn, parse_output


def test_thought_and_action() -> None:
    parsed = parse_output("Thought: the coin is north.\nAction:  move   north\n")
    assert parsed.action == "move north"
    assert parsed.thought == "the coin is north."


def test_last_action_wins_and_case_is_ignored() -> None:
    assert parse_output("action: look\nACTION: open door").action == "open door"


@pytest.mark.parametrize("text", ["", "I think I will go north", "Action:", "Action:   \n"])
def test_unparsable_output_raises_typed_error(text: str) -> None:
    with pytest.raises(ActionParseError) as info:
        parse_output(text)
    assert info.value.text == text


def test_overlong_action_is_rejected() -> None:
    with pytest.raises(ActionParseError, match="characters long"):
        parse_output("Action: " + "go " * 200)


def test_candidate_records_parse_error_instead_of_empty_action() -> None:
    candidate = candidate_from_text("no action here")
    assert candidate.action is None
    assert not candidate.is_valid
    assert candidate.parse_error and "Action" in candidate.parse_error


def test_format_round_trips() -> None:
    text = format_turn("take coin", "it is here")
    parsed = parse_output(text)
    assert (parsed.thought, parsed.action) == ("it is here", "take coin")
