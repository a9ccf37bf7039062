"""The write lock the SQLite writer and workers share (storage/sqlite/lock.py):
freed when the process that held it dies, however far it got.

Each case runs a real spawned process that takes the lock and dies by
`os._exit` at one point of taking or giving it back."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time

import pytest
from conftest import wait_for

from pedidos.storage.sqlite.lock import UNRECORDED_S, WRITER, WriteLock

WORKER = 3


def _die(lock: WriteLock, where: str) -> None:
    owned = lock.held_by(WORKER)
    if where == "before recording":  # took it, killed before writing down who holds it
        lock.lock.acquire()
    elif where == "holding":
        owned.__enter__()
    elif where == "after clearing":  # wrote down it holds nothing, killed before releasing
        owned.__enter__()
        lock.holder.value = 0
    os._exit(0)


def _run(target, *args) -> None:
    process = multiprocessing.get_context("spawn").Process(target=target, args=args)
    process.start()
    process.join(30)
    assert process.exitcode == 0


@pytest.mark.parametrize("where", ["before recording", "holding", "after clearing"])
def test_a_dead_holder_s_lock_is_freed_wherever_it_died(where):
    lock = WriteLock()
    _run(_die, lock, where)
    assert not lock.lock.acquire(block=False), "the dead process should hold it now"
    lock.release_of(WORKER)
    assert lock.lock.acquire(timeout=5), "release_of left the lock taken"
    lock.lock.release()


def test_a_free_lock_stays_free_and_whole():
    lock = WriteLock()
    lock.release_of(WORKER)  # nothing held: must not release a free lock (ValueError) nor keep it
    with lock.held_by(1):
        assert lock.holder.value == 1
    assert lock.lock.acquire(block=False)
    lock.lock.release()


def _hold(lock: WriteLock, owner: int, taken, done) -> None:
    with lock.held_by(owner):
        taken.set()
        done.wait(30)


def test_a_live_holder_keeps_the_lock_when_another_process_dies():
    ctx = multiprocessing.get_context("spawn")
    lock = WriteLock()
    taken, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(lock, 1, taken, done))
    holder.start()
    try:
        assert taken.wait(30)
        started = time.monotonic()
        lock.release_of(WORKER)  # worker 3 died; worker 1 holds the lock, recorded
        assert time.monotonic() - started < UNRECORDED_S  # no wait: a holder is recorded
        assert not lock.lock.acquire(block=False), "worker 1's lock was taken from it"
    finally:
        done.set()
        holder.join(30)
    assert holder.exitcode == 0
    assert lock.lock.acquire(timeout=5)
    lock.lock.release()


def test_two_deaths_looked_at_together_free_the_lock_once():
    # Two workers dying at once: their release_of calls run in two threads.
    lock = WriteLock()
    _run(_die, lock, "before recording")
    errors: list[BaseException] = []

    def look(owner: int) -> None:
        try:
            lock.release_of(owner)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=look, args=(owner,)) for owner in (WORKER, WORKER + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert lock.lock.acquire(timeout=5), "the lock stayed taken"
    assert not lock.lock.acquire(block=False)  # one lock, not a semaphore released twice
    lock.lock.release()


def _take_turns(lock: WriteLock, owner: int, until) -> None:
    while not until.is_set():
        with lock.held_by(owner):
            time.sleep(0.001)


def test_live_holders_taking_turns_keep_the_lock_whole():
    # The lock busy with live holders all the time release_of waits: it must
    # see them, and release nothing (which would break one of them).
    ctx = multiprocessing.get_context("spawn")
    lock = WriteLock()
    until = ctx.Event()
    holders = [ctx.Process(target=_take_turns, args=(lock, n, until)) for n in (1, 2)]
    for holder in holders:
        holder.start()
    try:
        wait_for(lambda: lock.holds.value >= 100, timeout=30)  # both under way
        for _ in range(5):
            lock.release_of(WORKER)
    finally:
        until.set()
        for holder in holders:
            holder.join(30)
    assert [holder.exitcode for holder in holders] == [0, 0]  # no ValueError in either


def test_the_writer_gives_up_on_a_lock_a_live_worker_does_not_let_go():
    # A worker stopped (SIGSTOP) while it holds the lock is alive: no death
    # frees it. The writer, whose clients wait, refuses its batch after its
    # patience instead of leaving every order unanswered.
    lock = WriteLock()
    stopped = lock.held_by(WORKER)
    stopped.__enter__()
    try:
        started = time.monotonic()
        why = f"worker {WORKER} has held the server's write lock"
        refused = pytest.raises(sqlite3.OperationalError, match=why)
        with refused, lock.held_by(WRITER, patience=1.0):
            pass
        assert time.monotonic() - started >= 1.0
    finally:
        stopped.__exit__()
    with lock.held_by(WRITER, patience=1.0):  # let go: the writer goes on
        assert lock.holder.value == WRITER
