import threading
import time

import pytest

from noisecraft.server.pool import JobTimeout, ServerBusy, WorkPool


def test_capacity_is_workers_plus_queue_and_slots_come_back():
    pool, gate = WorkPool(workers=1, queue_size=2, timeout_s=10), threading.Event()
    jobs = [pool.submit(lambda job: gate.wait(5)) for _ in range(3)]
    with pytest.raises(ServerBusy):
        pool.submit(lambda job: None)
    gate.set()
    assert [pool.wait(j) for j in jobs] == [True] * 3
    time.sleep(0.05)
    assert pool.pending == 0 and pool.wait(pool.submit(lambda job: 42)) == 42
    pool.shutdown()


def test_a_running_job_stops_at_its_next_check_after_the_deadline():
    pool, steps = WorkPool(workers=1, queue_size=0, timeout_s=0.2), []

    def work(job):
        for i in range(1000):
            job.check()
            steps.append(i)
            time.sleep(0.01)

    job = pool.submit(work)
    with pytest.raises(JobTimeout, match="0.2 s limit"):
        pool.wait(job)
    with pytest.raises(JobTimeout):
        job.future.result(2)                    # the work itself ended by the check, not by running out
    assert len(steps) < 100
    pool.shutdown()


def test_a_job_that_waited_past_its_deadline_never_starts():
    pool, gate, ran = WorkPool(workers=1, queue_size=1, timeout_s=0.2), threading.Event(), []
    first = pool.submit(lambda job: gate.wait(5))
    second = pool.submit(lambda job: ran.append(1))
    with pytest.raises(JobTimeout):
        pool.wait(second)
    gate.set()
    first.future.result(2)
    time.sleep(0.05)
    assert ran == [] and pool.pending == 0
    pool.shutdown()
