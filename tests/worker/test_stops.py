import pytest

from opta_lmx.worker.stops import StopMatcher


def run(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = ""
    for piece in pieces:
        out += matcher.feed(piece)
        if matcher.stopped:
            return out, True
    return out + matcher.flush(), False


@pytest.mark.parametrize(
    ("stops", "pieces", "expected"),
    [
        ([], ["ab", "cd"], ("abcd", False)),
        (["cd"], ["ab", "cd", "ef"], ("ab", True)),
        (["cd"], ["abc", "def"], ("ab", True)),  # split across pieces
        (["END"], ["xE", "N", "Dy"], ("x", True)),  # split over three pieces
        (["END"], ["xE", "N", "d"], ("xENd", False)),  # a false start is released
        (["a", "bc"], ["xyzb", "c"], ("xyz", True)),
        (["bc", "a"], ["xbza"], ("xbz", True)),  # the earliest stop wins
        (["\n\n"], ["line\n", "\nmore"], ("line", True)),
        (["stop"], ["sto"], ("sto", False)),  # held back, then flushed at the end
        ([""], ["abc"], ("abc", False)),  # an empty stop string means nothing
    ],
)
def test_stop_matcher(stops: list[str], pieces: list[str], expected: tuple[str, bool]) -> None:
    assert run(stops, pieces) == expected


def test_no_stop_text_is_held_back_needlessly() -> None:
    matcher = StopMatcher(["xyz"])
    assert matcher.feed("hello x") == "hello "
    assert matcher.feed("a") == "xa"


def test_the_stop_string_that_ended_the_text_is_known() -> None:
    matcher = StopMatcher(["world", "lo"])
    assert matcher.matched is None
    out = matcher.feed("hel") + matcher.feed("lo world")
    assert out == "hel" and matcher.stopped and matcher.matched == "lo"  # the first to appear wins
