"""Quota pacing, simulated: many workers against Resource Manager's token bucket (the
emulator's own model of it) on a simulated clock, so that any bucket size, latency and
number of workers can be tried in milliseconds, and every 429 counted."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.server import WRITE_BUCKET, _Bucket
from kvfirewall.vaults import LOW_WATER, REFILL_PER_SECOND, _Pacer

ARM_SIZE, ARM_RATE = WRITE_BUCKET  # the service's bucket, as the emulator models it


@dataclass
class Outcome:
    refused: int  # answered 429
    seconds: float  # until the last answer


def simulate(
    *, size: int, workers: int, requests: int, latency: float, jitter: float, seed: int
) -> Outcome:
    """`workers` each wait for the pacer, make the fresh read (0..`jitter` s), send the
    PATCH (`latency` s there and back), and start on the next vault; a refused write is
    tried again."""
    now = [0.0]
    bucket = _Bucket(size, ARM_RATE, clock=lambda: now[0])
    pacer = _Pacer(REFILL_PER_SECOND["writes"], lambda: now[0])
    rng = random.Random(seed)
    queue: list[tuple[float, int, str, tuple]] = []
    order = 0

    def at(when: float, event: str, *data) -> None:
        nonlocal order
        order += 1
        heapq.heappush(queue, (when, order, event, data))

    for _ in range(workers):
        at(0.0, "ready")
    started = refused = 0
    while queue:
        now[0], _, event, data = heapq.heappop(queue)
        if event == "ready" and started < requests:
            wait = pacer.take()
            if wait:
                at(now[0] + wait, "ready")
                continue
            started += 1
            at(now[0] + rng.uniform(0, jitter) + latency / 2, "arrive")
        elif event == "arrive":
            taken = bucket.take()
            answer = (bucket.remaining(), None if taken else bucket.retry_after())
            at(now[0] + latency / 2, "answer", taken, answer)
        elif event == "answer":
            taken, (remaining, retry_after) = data
            pacer.observe(remaining, retry_after)
            if not taken:
                refused += 1
                started -= 1
            at(now[0], "ready")
    return Outcome(refused, now[0])


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(LOW_WATER, 250),
    workers=st.integers(1, 64),
    requests=st.integers(1, 600),
    latency=st.floats(0.001, 2.0),
    jitter=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**32),
)
def test_no_write_is_refused_whatever_the_bucket_workers_and_latency(
    size, workers, requests, latency, jitter, seed
):
    """Resource Manager's write bucket is 200; the emulator's tests use 20. Either way, and
    with up to 64 workers starting at the same instant, not one write is answered 429."""
    outcome = simulate(
        size=size, workers=workers, requests=requests, latency=latency, jitter=jitter, seed=seed
    )
    assert outcome.refused == 0


@settings(max_examples=100, deadline=None)
@given(
    requests=st.integers(400, 1500),
    latency=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**32),
)
def test_a_large_run_spends_the_write_quota_as_fast_as_it_refills(requests, latency, seed):
    """With Resource Manager's bucket (200, 10/s) and 32 workers, the run takes no longer
    than the quota needs: the burst, then the refill, plus the reserve it keeps in the bucket
    and a round trip at each end."""
    size, workers = ARM_SIZE, 32
    outcome = simulate(
        size=size, workers=workers, requests=requests, latency=latency, jitter=0.1, seed=seed
    )
    floor = (requests - size) / ARM_RATE  # no client can be faster without a 429
    margin = (LOW_WATER + 2) / ARM_RATE + 2 * (latency + 0.1)  # the reserve, 2 round trips
    assert outcome.refused == 0
    assert floor <= outcome.seconds <= floor + margin
