from opta_lmx.supervisor.states import Backoff


def test_backoff_doubles_up_to_the_cap_then_gives_up() -> None:
    backoff = Backoff(initial=1, cap=4, max_failures=5, window=100)
    delays = [backoff.record_failure(float(t)) for t in range(6)]
    assert delays == [1, 2, 4, 4, 4, None]


def test_failures_outside_the_window_are_forgotten() -> None:
    backoff = Backoff(initial=1, cap=60, max_failures=2, window=10)
    assert backoff.record_failure(0) == 1
    assert backoff.record_failure(1) == 2
    assert backoff.record_failure(20) == 1  # the two earlier ones left the window


def test_reset_clears_the_count() -> None:
    backoff = Backoff(initial=1, cap=60, max_failures=1, window=100)
    assert backoff.record_failure(0) == 1
    assert backoff.record_failure(1) is None
    backoff.reset()
    assert backoff.record_failure(2) == 1
