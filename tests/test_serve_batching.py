"""The dynamic batcher alone, with a model that records what it was given: batches fill up to ``max_batch``,
a request waits for company only while a batch is forming (requests announced with ``expect``, or a previous
batch of several) and at most ``max_delay``, a lone client never waits, every request gets its own rows back in
order, a request no longer wanted is dropped before its run, a failing run fails only its batch, and stopping
finishes what was submitted."""
import asyncio
import time

import pytest
import torch

from mobilenetv3.server.batching import Dropped, DynamicBatcher, warmup_batches


class Recorder:
    """A "model" whose output row is its input image's first value: a request can check it got its own rows."""

    def __init__(self, fail_on: int = -1):
        self.batches, self.fail_on = [], fail_on

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(images))
        if len(self.batches) - 1 == self.fail_on:
            raise RuntimeError("the model failed")
        return images[:, :1, 0, 0]


def images(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 2, 2, 2).contiguous()


def together(batcher: DynamicBatcher, *tensors, **options):
    """Concurrent requests, each announced (``expect``) before any is submitted, as admitted requests are."""
    expected = [batcher.expect() for _ in tensors]
    return [batcher.submit(t, e, **options) for t, e in zip(tensors, expected)]


def run_with(batcher: DynamicBatcher, scenario):
    batcher.start()
    try:
        return asyncio.run(scenario(batcher))
    finally:
        batcher.stop()


def test_concurrent_requests_fill_batches_up_to_max_batch_and_get_their_own_rows():
    model = Recorder()

    async def scenario(batcher):
        return await asyncio.gather(*together(batcher, *(images(i, i + 0.5) for i in range(5))))  # 10 images

    answers = run_with(DynamicBatcher(model, max_batch=4, max_delay=0.2), scenario)
    assert model.batches == [4, 4, 2]  # two requests of 2 images per full batch
    for i, (rows, batch) in enumerate(answers):
        assert rows.flatten().tolist() == [i, i + 0.5]
        assert batch == (2 if i == 4 else 4)


def test_a_request_larger_than_max_batch_runs_alone_in_chunks():
    model = Recorder()

    async def scenario(batcher):
        return await batcher.submit(images(*range(7)))

    rows, batch = run_with(DynamicBatcher(model, max_batch=3, max_delay=0.01), scenario)
    assert model.batches == [3, 3, 1] and batch == 7
    assert rows.flatten().tolist() == list(range(7))


def test_a_request_waits_for_company_on_its_way_only_within_the_delay():
    # the old rule, "the oldest request always waits max_delay for company", is gone: it cost a lone client
    # the whole delay; a request waits only for one announced (admitted, still decoding) as here
    async def two_requests(batcher, gap: float):
        second_coming = batcher.expect()
        first = asyncio.ensure_future(batcher.submit(images(1)))
        await asyncio.sleep(gap)
        return await asyncio.gather(first, batcher.submit(images(2), second_coming))

    joined = Recorder()
    run_with(DynamicBatcher(joined, max_batch=8, max_delay=1.0), lambda b: two_requests(b, 0.05))
    assert joined.batches == [2]  # the second came within the first's delay
    alone = Recorder()
    run_with(DynamicBatcher(alone, max_batch=8, max_delay=0.02), lambda b: two_requests(b, 0.6))
    assert alone.batches == [1, 1]  # the first did not wait for it


def test_a_lone_client_never_waits_for_company():
    model = Recorder()

    async def one_after_another(batcher):
        started = time.monotonic()
        for i in range(5):
            await batcher.submit(images(i), batcher.expect())
        return time.monotonic() - started

    seconds = run_with(DynamicBatcher(model, max_batch=8, max_delay=0.5), one_after_another)
    assert model.batches == [1] * 5 and seconds < 0.5  # the old rule: 5 x 0.5 s


def test_after_a_batch_of_several_requests_the_next_waits_for_as_many_within_the_delay():
    model = Recorder()

    async def scenario(batcher):
        await asyncio.gather(*together(batcher, images(1), images(2), images(3)))  # three concurrent clients
        first = asyncio.ensure_future(batcher.submit(images(4)))  # their next requests, not announced
        await asyncio.sleep(0.1)
        await asyncio.gather(first, batcher.submit(images(5)), batcher.submit(images(6)))

    run_with(DynamicBatcher(model, max_batch=8, max_delay=1.0), scenario)
    assert model.batches == [3, 3]


def test_a_batch_at_a_preferred_size_runs_without_waiting_for_more():
    model = Recorder()

    async def scenario(batcher):
        late = batcher.expect()
        started = time.monotonic()
        first = await asyncio.gather(*together(batcher, images(1), images(2)))
        waited = time.monotonic() - started
        await batcher.submit(images(3), late)
        return first, waited

    first, waited = run_with(DynamicBatcher(model, max_batch=8, max_delay=1.0, preferred=(2, 4)), scenario)
    assert model.batches == [2, 1] and waited < 0.5 and [rows.item() for rows, _ in first] == [1, 2]


def test_a_request_no_longer_wanted_is_dropped_before_its_run():
    model = Recorder()

    async def scenario(batcher):
        first, second = together(batcher, images(1), images(2))
        gone_task = asyncio.ensure_future(batcher.submit(images(7), wanted=lambda: "client_gone"))
        return await asyncio.gather(first, second, gone_task, return_exceptions=True)

    first, second, dropped = run_with(DynamicBatcher(model, max_batch=8, max_delay=0.1), scenario)
    assert isinstance(dropped, Dropped) and dropped.reason == "client_gone"
    assert rows_of(first) == [1] and rows_of(second) == [2] and sum(model.batches) == 2  # image 7 never ran


def rows_of(answer) -> list:
    return answer[0].flatten().tolist()


def test_max_batch_1_runs_every_request_alone():
    model = Recorder()

    async def scenario(batcher):
        return await asyncio.gather(*(batcher.submit(images(i)) for i in range(4)))

    answers = run_with(DynamicBatcher(model, max_batch=1, max_delay=1.0), scenario)
    assert model.batches == [1, 1, 1, 1] and [rows.item() for rows, _ in answers] == [0, 1, 2, 3]


def test_a_failing_run_fails_its_batch_and_the_next_batch_is_served():
    model = Recorder(fail_on=0)

    async def scenario(batcher):
        first = await asyncio.gather(*together(batcher, images(1), images(2)), return_exceptions=True)
        second = await batcher.submit(images(3))
        return first, second

    first, (rows, _) = run_with(DynamicBatcher(model, max_batch=4, max_delay=0.2), scenario)
    assert all(isinstance(answer, RuntimeError) for answer in first)
    assert rows.item() == 3


def test_stop_finishes_the_requests_already_submitted():
    model = Recorder()
    batcher = DynamicBatcher(model, max_batch=2, max_delay=0.3)
    batcher.start()

    async def scenario():
        pending = [asyncio.ensure_future(request) for request in together(batcher, *(images(i) for i in range(3)))]
        await asyncio.sleep(0.05)  # all three in the queue
        stopping = asyncio.get_running_loop().run_in_executor(None, batcher.stop)
        answers = await asyncio.gather(*pending)
        await stopping
        return answers

    answers = asyncio.run(scenario())
    assert [rows.item() for rows, _ in answers] == [0, 1, 2] and model.batches == [2, 1]


def test_settings_out_of_range_are_refused():
    with pytest.raises(ValueError):
        DynamicBatcher(Recorder(), max_batch=0)
    with pytest.raises(ValueError):
        DynamicBatcher(Recorder(), max_delay=-1)
    with pytest.raises(ValueError):
        DynamicBatcher(Recorder(), max_batch=4, preferred=(8,))


def test_the_warm_up_runs_every_batch_size_before_ready_and_a_failure_is_reported():
    model = Recorder()
    batcher = DynamicBatcher(model, max_batch=4)
    batcher.start(warmup_batches((2, 2, 2), 4))
    batcher.wait_ready()
    batcher.stop()
    assert model.batches == [4, 3, 2, 1]
    broken = DynamicBatcher(Recorder(fail_on=0), max_batch=2)
    broken.start(warmup_batches((2, 2, 2), 2))
    with pytest.raises(RuntimeError, match="failed on a warm-up batch: the model failed"):
        broken.wait_ready()
