"""Stateful property tests: random operation sequences against reference models of tokio's
oneshot, broadcast and watch semantics (and Notify's permit).

Every operation's result (a value, or which exception) is compared with what a plain Python
model says. Async operations run in a short ``trio.run`` on the autojump clock inside a
``move_on_after``: "cancelled while blocked" is how a would-block receive shows, and it must
consume nothing (the model does not change).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio
import trio.testing
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import trio_cancel as tc

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

SETTINGS = settings(max_examples=200, stateful_step_count=25, deadline=None)

BLOCKED = ("blocked",)


def outcome_of(fn: Callable[[], object]) -> tuple[Any, ...]:
    try:
        return ("ok", fn())
    except Exception as exc:  # noqa: BLE001 - the exception type is the result under test
        return ("raise", type(exc), getattr(exc, "skipped", None))


def run_async(fn: Callable[[], Awaitable[object]]) -> tuple[Any, ...]:
    """Run ``fn`` with a 1 s (virtual) bound: its value, its exception, or BLOCKED."""

    async def main() -> tuple[Any, ...]:
        with trio.move_on_after(1):
            try:
                return ("ok", await fn())
            except Exception as exc:  # noqa: BLE001 - the exception type is the result
                return ("raise", type(exc), getattr(exc, "skipped", None))
        return BLOCKED

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def raises(exc: type[BaseException], skipped: int | None = None) -> tuple[Any, ...]:
    return ("raise", exc, skipped)


# ---------------------------------------------------------------- oneshot


class OneshotModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sender, self.receiver = tc.open_oneshot_channel[int]()
        self.value: int | None = None
        self.sent = self.taken = self.sender_closed = self.receiver_closed = False

    def expected_receive(self, *, blocking: bool) -> tuple[Any, ...]:
        if self.receiver_closed:
            return raises(trio.ClosedResourceError)
        if self.sent and not self.taken:
            self.taken = True
            return ("ok", self.value)
        if self.taken or self.sender_closed:
            return raises(trio.EndOfChannel)
        return BLOCKED if blocking else raises(trio.WouldBlock)

    @rule(v=st.integers())
    def send_value(self, v: int) -> None:
        got = outcome_of(lambda: self.sender.send(v))
        if self.sender_closed or self.sent:
            assert got == raises(trio.ClosedResourceError)
        elif self.receiver_closed:
            assert got == raises(trio.BrokenResourceError)
        else:
            assert got == ("ok", None)
            self.sent, self.value = True, v

    @rule()
    def try_recv(self) -> None:
        got = outcome_of(self.receiver.receive_nowait)
        assert got == self.expected_receive(blocking=False)

    @rule()
    def recv(self) -> None:
        got = run_async(self.receiver.receive)
        assert got == self.expected_receive(blocking=True)

    @rule()
    def close_sender(self) -> None:
        self.sender.close()
        self.sender_closed = True

    @rule()
    def close_receiver(self) -> None:
        self.receiver.close()
        self.receiver_closed = True

    @invariant()
    def sender_sees_receiver(self) -> None:
        assert self.sender.is_closed() == self.receiver_closed


TestOneshotModel = OneshotModel.TestCase
TestOneshotModel.settings = SETTINGS


# ---------------------------------------------------------------- broadcast and watch


class FanoutModel(RuleBasedStateMachine):
    """What the broadcast and watch models share: which senders and receivers are open, and the
    rules that only touch that. Subclasses say what a receive should return."""

    senders: list[tuple[Any, bool]]
    receivers: list[tuple[Any, bool]]

    def open_receivers(self) -> int:
        return sum(1 for _, is_open in self.receivers if is_open)

    def open_senders(self) -> int:
        return sum(1 for _, is_open in self.senders if is_open)

    def expected_receive(self, i: int, *, blocking: bool) -> tuple[Any, ...]:
        raise NotImplementedError

    @rule(r=st.integers(0, 10))
    def try_recv(self, r: int) -> None:
        i = r % len(self.receivers)
        got = outcome_of(self.receivers[i][0].receive_nowait)
        assert got == self.expected_receive(i, blocking=False)

    @rule(r=st.integers(0, 10))
    def recv(self, r: int) -> None:
        i = r % len(self.receivers)
        got = run_async(self.receivers[i][0].receive)
        assert got == self.expected_receive(i, blocking=True)

    @precondition(lambda self: len(self.senders) < 4)
    @rule(s=st.integers(0, 10))
    def clone_sender(self, s: int) -> None:
        sender, is_open = self.senders[s % len(self.senders)]
        got = outcome_of(sender.clone)
        if not is_open:
            assert got == raises(trio.ClosedResourceError)
            return
        self.senders.append((got[1], True))

    @rule(r=st.integers(0, 10))
    def close_receiver(self, r: int) -> None:
        i = r % len(self.receivers)
        self.receivers[i][0].close()
        self.receivers[i] = (self.receivers[i][0], False)

    @rule(s=st.integers(0, 10))
    def close_sender(self, s: int) -> None:
        i = s % len(self.senders)
        self.senders[i][0].close()
        self.senders[i] = (self.senders[i][0], False)

    @invariant()
    def counts(self) -> None:
        for sender, _ in self.senders:
            assert sender.receiver_count == self.open_receivers()
            assert sender.is_closed() == (self.open_receivers() == 0)


# ---------------------------------------------------------------- broadcast


class BroadcastModel(FanoutModel):
    def __init__(self) -> None:
        super().__init__()
        self.capacity = 3
        send, recv = tc.open_broadcast_channel[int](self.capacity)
        self.senders: list[tuple[tc.BroadcastSender[int], bool]] = [(send, True)]
        self.receivers: list[tuple[tc.BroadcastReceiver[int], bool]] = [(recv, True)]
        self.positions: list[int] = [0]  # model: next sequence number per receiver
        self.values: list[int] = []  # every value ever sent, by sequence number

    def expected_receive(self, i: int, *, blocking: bool) -> tuple[Any, ...]:
        if not self.receivers[i][1]:
            return raises(trio.ClosedResourceError)
        head = len(self.values)
        oldest = max(0, head - self.capacity)
        pos = self.positions[i]
        if pos < oldest:
            self.positions[i] = oldest
            return raises(tc.LaggedError, oldest - pos)
        if pos < head:
            self.positions[i] = pos + 1
            return ("ok", self.values[pos])
        if self.open_senders() == 0:
            return raises(trio.EndOfChannel)
        return BLOCKED if blocking else raises(trio.WouldBlock)

    @rule(s=st.integers(0, 10), v=st.integers())
    def send_value(self, s: int, v: int) -> None:
        sender, is_open = self.senders[s % len(self.senders)]
        got = outcome_of(lambda: sender.send(v))
        if not is_open:
            assert got == raises(trio.ClosedResourceError)
        elif self.open_receivers() == 0:
            assert got == raises(trio.BrokenResourceError)
        else:
            assert got == ("ok", self.open_receivers())
            self.values.append(v)

    @rule(s=st.integers(0, 10))
    def subscribe(self, s: int) -> None:
        sender, is_open = self.senders[s % len(self.senders)]
        got = outcome_of(sender.subscribe)
        if not is_open:
            assert got == raises(trio.ClosedResourceError)
            return
        self.receivers.append((got[1], True))
        self.positions.append(len(self.values))

    @rule(r=st.integers(0, 10))
    def resubscribe(self, r: int) -> None:
        receiver, is_open = self.receivers[r % len(self.receivers)]
        got = outcome_of(receiver.resubscribe)
        if not is_open:
            assert got == raises(trio.ClosedResourceError)
            return
        self.receivers.append((got[1], True))
        self.positions.append(len(self.values))


TestBroadcastModel = BroadcastModel.TestCase
TestBroadcastModel.settings = SETTINGS


# ---------------------------------------------------------------- watch


class WatchModel(FanoutModel):
    def __init__(self) -> None:
        super().__init__()
        send, recv = tc.open_watch_channel(0)
        self.senders: list[tuple[tc.WatchSender[int], bool]] = [(send, True)]
        self.receivers: list[tuple[tc.WatchReceiver[int], bool]] = [(recv, True)]
        self.seen: list[int] = [0]
        self.value = 0
        self.version = 0

    def expected_receive(self, i: int, *, blocking: bool) -> tuple[Any, ...]:
        if not self.receivers[i][1]:
            return raises(trio.ClosedResourceError)
        if self.seen[i] != self.version:
            self.seen[i] = self.version
            return ("ok", self.value)
        if self.open_senders() == 0:
            return raises(trio.EndOfChannel)
        return BLOCKED if blocking else raises(trio.WouldBlock)

    def sender(self, s: int) -> tuple[tc.WatchSender[int], bool]:
        return self.senders[s % len(self.senders)]

    @rule(s=st.integers(0, 10), v=st.integers(0, 5))
    def send_value(self, s: int, v: int) -> None:
        sender, is_open = self.sender(s)
        got = outcome_of(lambda: sender.send(v))
        if not is_open:
            assert got == raises(trio.ClosedResourceError)
        elif self.open_receivers() == 0:
            assert got == raises(trio.BrokenResourceError)
        else:
            assert got == ("ok", None)
            self.value, self.version = v, self.version + 1

    @rule(s=st.integers(0, 10), v=st.integers(0, 5))
    def send_replace(self, s: int, v: int) -> None:
        sender, is_open = self.sender(s)
        got = outcome_of(lambda: sender.send_replace(v))
        if not is_open:
            assert got == raises(trio.ClosedResourceError)
        else:
            assert got == ("ok", self.value)
            self.value, self.version = v, self.version + 1

    @rule(r=st.integers(0, 10), wanted=st.integers(0, 5))
    def wait_for(self, r: int, wanted: int) -> None:
        i = r % len(self.receivers)
        receiver, is_open = self.receivers[i]
        got = run_async(lambda: receiver.wait_for(lambda v: v == wanted))
        if not is_open:
            assert got == raises(trio.ClosedResourceError)
        elif self.value == wanted:
            assert got == ("ok", wanted)
            self.seen[i] = self.version
        elif self.open_senders() == 0:
            assert got == raises(trio.EndOfChannel)
        else:
            assert got == BLOCKED

    @rule(r=st.integers(0, 10))
    def has_changed(self, r: int) -> None:
        i = r % len(self.receivers)
        receiver, is_open = self.receivers[i]
        got = outcome_of(receiver.has_changed)
        if not is_open:
            assert got == raises(trio.ClosedResourceError)
        elif self.open_senders() == 0:
            assert got == raises(trio.EndOfChannel)
        else:
            assert got == ("ok", self.seen[i] != self.version)

    @rule(r=st.integers(0, 10))
    def borrow_and_update(self, r: int) -> None:
        i = r % len(self.receivers)
        receiver, is_open = self.receivers[i]
        got = outcome_of(receiver.borrow_and_update)
        if not is_open:
            assert got == raises(trio.ClosedResourceError)
        else:
            assert got == ("ok", self.value)
            self.seen[i] = self.version

    @rule(s=st.integers(0, 10))
    def subscribe(self, s: int) -> None:
        sender, is_open = self.sender(s)
        got = outcome_of(sender.subscribe)
        if not is_open:
            assert got == raises(trio.ClosedResourceError)
            return
        self.receivers.append((got[1], True))
        self.seen.append(self.version)

    @rule(r=st.integers(0, 10))
    def clone_receiver(self, r: int) -> None:
        i = r % len(self.receivers)
        receiver, is_open = self.receivers[i]
        got = outcome_of(receiver.clone)
        if not is_open:
            assert got == raises(trio.ClosedResourceError)
            return
        self.receivers.append((got[1], True))
        self.seen.append(self.seen[i])

    @invariant()
    def current_value(self) -> None:
        for sender, is_open in self.senders:
            if is_open:
                assert sender.borrow() == self.value


TestWatchModel = WatchModel.TestCase
TestWatchModel.settings = SETTINGS


# ---------------------------------------------------------------- Notify


class NotifyModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.notify = tc.Notify()
        self.permit = False

    @rule()
    def notify_one(self) -> None:
        self.notify.notify_one()
        self.permit = True

    @rule()
    def notify_waiters(self) -> None:
        self.notify.notify_waiters()  # nobody waits here: stores nothing

    @rule()
    def wait(self) -> None:
        got = run_async(self.notify.wait)
        assert got == (("ok", None) if self.permit else BLOCKED)
        self.permit = False


TestNotifyModel = NotifyModel.TestCase
TestNotifyModel.settings = SETTINGS
