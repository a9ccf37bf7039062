"""A node's lease as its workers see it (pedidos/storage/lease.py) and the
watch that ends a worker at work once it no longer holds (processing/orphan.py).

Real processes, spawned as the pool spawns workers: the lease is shared memory.
"""

from __future__ import annotations

import multiprocessing
import time

from pedidos.processing.orphan import LeaseWatch
from pedidos.storage.lease import FENCED_EXIT, NodeLease, margin, now


def _work_under(lease: NodeLease, generation: int, started) -> None:
    watch = LeaseWatch(lease, 3)
    with watch.working(generation):
        started.set()
        time.sleep(30)


def _spawn(lease: NodeLease, generation: int):
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    worker = context.Process(target=_work_under, args=(lease, generation, started), daemon=True)
    worker.start()
    assert started.wait(20)
    return worker


def test_a_worker_at_work_ends_when_its_node_registers_anew_though_the_deadline_moved_on():
    # A worker that missed the moment its lease ran out (a task in one long C
    # call holds the interpreter lock its watch needs) found, after the node
    # registered again, a lease that held, and went on with an order another
    # node had taken. A registration after a lost lease is a new generation.
    lease = NodeLease(5.0)
    lease.renewed(now())
    worker = _spawn(lease, lease.generation)
    try:
        time.sleep(0.3)
        assert worker.is_alive()  # the lease holds: it works on
        lease.lost()
        lease.renewed(now())  # registered anew: the deadline is ahead again
        worker.join(5)
        assert worker.exitcode == FENCED_EXIT
        # Its mark tells this end from a task's own os._exit(FENCED_EXIT); read once.
        assert (lease.fenced(3), lease.fenced(3), lease.fenced(2)) == (True, False, False)
    finally:
        worker.kill()
        worker.join(5)


def test_a_worker_at_work_ends_a_margin_before_its_lease_runs_out():
    lease = NodeLease(4.0)  # its workers stop 1 s short: room for a slow spawn
    sent = now()
    lease.renewed(sent)
    worker = _spawn(lease, lease.generation)
    try:
        worker.join(10)
        ended = now()
        assert worker.exitcode == FENCED_EXIT
        # The others may reap from sent + lease on; it was gone before that.
        assert sent + 4.0 - margin(4.0) <= ended < sent + 4.0, ended - sent
    finally:
        worker.kill()
        worker.join(5)


def test_a_renewal_never_moves_the_deadline_back_and_claims_need_headroom():
    lease = NodeLease(4.0)
    assert not lease.holds(0)  # nothing holds before the node's name is taken
    lease.renewed(now())
    later = lease.holds(0, headroom=lease.claim_headroom())
    lease.renewed(now() - 10)  # a renewal whose answer came very late
    assert later and lease.holds(0)
    assert not lease.holds(0, headroom=4.0)
    lease.lost()
    assert not lease.holds(0) and lease.holds(1)
