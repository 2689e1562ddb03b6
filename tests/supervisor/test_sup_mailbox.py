from __future__ import annotations

import pytest
import trio
import trio.testing

from supervisor import Mailbox, MailboxClosed


async def test_fifo_and_len() -> None:
    box: Mailbox[int] = Mailbox()
    for i in range(5):
        box.put_nowait(i)
    assert len(box) == 5
    assert [await box.get() for _ in range(3)] == [0, 1, 2]
    assert box.get_nowait() == 3
    assert len(box) == 1


def test_get_nowait_on_empty_would_block() -> None:
    with pytest.raises(trio.WouldBlock):
        Mailbox[int]().get_nowait()


async def test_get_parks_until_put() -> None:
    box: Mailbox[str] = Mailbox()
    got: list[str] = []

    async def getter() -> None:
        got.append(await box.get())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(getter)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        box.put_nowait("hi")
    assert got == ["hi"]


async def test_each_parked_getter_gets_one_item() -> None:
    box: Mailbox[int] = Mailbox()
    got: list[int] = []

    async def getter() -> None:
        got.append(await box.get())

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(getter)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(3):
            box.put_nowait(i)
    assert sorted(got) == [0, 1, 2]


async def test_cancelled_getter_loses_nothing(autojump_clock: trio.testing.MockClock) -> None:
    box: Mailbox[int] = Mailbox()
    with trio.move_on_after(1):
        await box.get()
    box.put_nowait(7)
    assert await box.get() == 7


async def test_close_drains_then_raises() -> None:
    box: Mailbox[int] = Mailbox()
    box.put_nowait(1)
    box.put_nowait(2)
    box.close()
    assert box.closed
    with pytest.raises(MailboxClosed):
        box.put_nowait(3)
    assert await box.get() == 1
    assert box.get_nowait() == 2
    with pytest.raises(MailboxClosed):
        await box.get()
    with pytest.raises(MailboxClosed):
        box.get_nowait()


async def test_close_wakes_parked_getters() -> None:
    box: Mailbox[int] = Mailbox()
    outcomes: list[str] = []

    async def getter() -> None:
        try:
            await box.get()
        except MailboxClosed:
            outcomes.append("closed")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(getter)
        nursery.start_soon(getter)
        await trio.testing.wait_all_tasks_blocked()
        box.close()
        box.close()  # idempotent
    assert outcomes == ["closed", "closed"]


async def test_parked_getters_are_served_in_order_when_one_is_cancelled() -> None:
    # The oldest getter waits in a slot of its own, the later ones in a list: cancelling any
    # of them leaves the others served oldest first, and a new getter queues behind them.
    box: Mailbox[int] = Mailbox()
    got: list[tuple[str, int]] = []
    scopes: dict[str, trio.CancelScope] = {}

    async def getter(name: str) -> None:
        with trio.CancelScope() as scopes[name]:
            got.append((name, await box.get()))

    async with trio.open_nursery() as nursery:
        for name in ("a", "b", "c"):
            nursery.start_soon(getter, name)
            await trio.testing.wait_all_tasks_blocked()
        scopes["a"].cancel()
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(getter, "d")
        await trio.testing.wait_all_tasks_blocked()
        scopes["c"].cancel()
        await trio.testing.wait_all_tasks_blocked()
        for i in range(2):
            box.put_nowait(i)
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(getter, "e")
        await trio.testing.wait_all_tasks_blocked()
        box.put_nowait(2)
    assert got == [("b", 0), ("d", 1), ("e", 2)]
    assert box._first is None and box._waiters is None
