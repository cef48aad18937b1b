"""The watchdog that ends overrunning checks: deadlines fire on time, in order, once; a
disarmed alarm never fires and lets go of what its callback holds."""

from __future__ import annotations

import gc
import threading
import time
import weakref

from exporter.runner import Watchdog


class _Run:
    """Stands for what an abort callback holds: a run's context and connections."""


def test_an_earlier_deadline_armed_after_a_later_one_fires_on_time() -> None:
    watchdog = Watchdog()
    fired: list[tuple[str, float]] = []
    done = threading.Event()
    start = time.monotonic()

    def record(name: str) -> None:
        fired.append((name, time.monotonic() - start))
        if name == "late":
            done.set()

    watchdog.arm(start + 0.6, lambda: record("late"))
    time.sleep(0.05)  # the watchdog thread now sleeps until the late deadline
    watchdog.arm(start + 0.2, lambda: record("early"))
    assert done.wait(5)
    assert [name for name, _ in fired] == ["early", "late"]
    assert 0.2 <= fired[0][1] < 0.35
    assert 0.6 <= fired[1][1] < 0.75


def test_a_disarmed_alarm_never_fires_and_holds_nothing() -> None:
    watchdog = Watchdog()
    fired: list[str] = []
    run = _Run()
    held = weakref.ref(run)
    start = time.monotonic()

    def abort_run(run: _Run = run) -> None:
        fired.append("disarmed")

    disarm = watchdog.arm(start + 0.2, abort_run)
    del abort_run, run
    kept = threading.Event()
    watchdog.arm(start + 0.4, kept.set)
    disarm()
    gc.collect()
    assert held() is None  # still in the heap, but without its callback
    assert kept.wait(5)
    assert fired == []


def test_each_alarm_fires_once_even_when_disarmed_afterwards() -> None:
    watchdog = Watchdog()
    count = 0
    fired = threading.Event()

    def once() -> None:
        nonlocal count
        count += 1
        fired.set()

    disarm = watchdog.arm(time.monotonic() + 0.05, once)
    assert fired.wait(5)
    disarm()
    time.sleep(0.2)
    assert count == 1
