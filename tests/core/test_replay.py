"""The anti-replay window (RFC 4303 §3.4.3) and ESN inference (RFC 4303 Appendix A).

The table test follows the Linux kernel's and wireguard-go's replay tests: numbered steps of (sequence
number, accepted?), each step a check followed, when it passes, by an accept, as the SA does after the
ICV verified. The expectations are RFC 4303's rule, not this code's output: a number is new when it is
above the highest one received, or within `size` of it and not yet received; 0 is never valid.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.replay import MAX_WINDOW, SEQ32, ReplayWindow
from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation


def _steps(w: int) -> list[tuple[int, bool]]:
    """The numbered table for a window of `w` packets (written with w as the unit so it fits any size)."""
    return [
        (1, True),  # 1: first packet
        (1, False),  # 2: duplicate
        (2, True),  # 3
        (w, True),  # 4: a jump ahead
        (w, False),  # 5: duplicate of the top
        (w + 1, True),  # 6: top = w+1, window now w+1-(w-1) = 2 .. w+1
        (1, False),  # 7: fell out of the window
        (2, False),  # 8: in the window, already received
        (3, True),  # 9: in the window, not yet received
        (3, False),  # 10
        (2 * w + 1, True),  # 11: top = 2w+1, window w+2 .. 2w+1
        (w + 2, True),  # 12: the oldest number the window still holds
        (w + 1, False),  # 13: one below it
        (2 * w, True),  # 14
        (2 * w, False),  # 15
        (0, False),  # 16: RFC 4303 §3.3.3: sequence number 0 is never sent
        (5 * w + 1, True),  # 17: a jump past the whole window
        (4 * w + 2, True),  # 18: the oldest number still held
        (4 * w + 1, False),  # 19: one below it
        (5 * w, True),  # 20
        (5 * w + 2, True),  # 21: the window slides by one
        (5 * w, False),  # 22
        (4 * w + 2, False),  # 23: slid out
        (4 * w + 3, True),  # 24: now the oldest held
        (SEQ32 - 1, True),  # 25: the last 32-bit number
        (SEQ32 - 1, False),  # 26
        (SEQ32 - 2, True),  # 27
        (SEQ32 - 1 - w, False),  # 28: just outside
        (SEQ32 - w, True),  # 29: just inside
    ]


@pytest.mark.parametrize("size", [32, 64, 128, 1024, 65536])
def test_replay_table(size: int) -> None:
    window = ReplayWindow(size)
    for step, (seq, expected) in enumerate(_steps(size), 1):
        accepted = window.check(seq)
        assert accepted is expected, (
            f"step {step}: seq {seq} should be {'accepted' if expected else 'refused'}"
        )
        if accepted:
            window.accept(seq)
            assert window.top >= seq, f"step {step}"


@pytest.mark.parametrize("size", [2, 32, 64, 128, 1024, 65536])
def test_window_holds_exactly_size_numbers(size: int) -> None:
    window = ReplayWindow(size)
    top = size + 1000
    window.accept(top)
    assert window.check(top - size + 1)  # the oldest number held
    assert not window.check(top - size)  # one older
    assert not window.check(top)


@given(st.lists(st.integers(min_value=0, max_value=300), max_size=120), st.sampled_from([1, 8, 32, 64, 100]))
@settings(max_examples=150, deadline=None)
def test_window_matches_a_reference_model(seqs: list[int], size: int) -> None:
    """Any arrival order: the window agrees with the RFC 4303 §3.4.3 rule written out directly."""
    window = ReplayWindow(size)
    received: set[int] = set()
    for seq in seqs:
        top = max(received, default=0)
        expected = seq != 0 and seq not in received and (seq > top or top - seq < size)
        assert window.check(seq) is expected
        if expected:
            window.accept(seq)
            received.add(seq)
        assert window.top == max(received, default=0)


@pytest.mark.parametrize("size", [1, 32, 128, 1024])
def test_long_in_order_runs_with_gaps_and_late_arrivals_match_the_model(size: int) -> None:
    """Mostly in order, as on a real link (the window full for long stretches), with numbers skipped,
    late ones arriving and replays: the window agrees with the reference rule at every step."""
    rng = random.Random(size)
    window = ReplayWindow(size)
    received: set[int] = set()
    nxt = 1
    for _ in range(5000):
        r = rng.random()
        if r < 0.9:
            seq, nxt = nxt, nxt + 1
        elif r < 0.95:
            nxt += rng.randrange(1, 3 * size + 2)  # a gap
            seq = nxt
        else:
            seq = max(1, nxt - rng.randrange(1, 2 * size + 2))  # late, or a replay
        top = max(received, default=0)
        expected = seq not in received and (seq > top or top - seq < size)
        assert window.check(seq) is expected
        if expected:
            window.accept(seq)
            received.add(seq)


@given(
    st.sampled_from([1, 8, 64, 128, 1000]),
    st.lists(st.integers(1, 3000), max_size=40),
    st.integers(1, 200),
    st.integers(1, 300),
)
@settings(max_examples=200, deadline=None)
def test_accept_run_is_accept_of_each(size: int, before: list[int], gap: int, run: int) -> None:
    """A run of new numbers recorded at once leaves the window as recording them one by one does."""
    one, many = ReplayWindow(size), ReplayWindow(size)
    for seq in before:
        for window in (one, many):
            if window.check(seq):
                window.accept(seq)
    first = one.top + gap
    for seq in range(first, first + run):
        one.accept(seq)
    many.accept_run(first, first + run - 1)
    assert (many.top, many.bitmap) == (one.top, one.bitmap)


@given(
    st.sampled_from([1, 8, 64, 128, 1000, 4096]),
    st.lists(st.integers(1, 6000), max_size=40),
    st.integers(-1200, 50),
    st.integers(1, 300),
)
@settings(max_examples=300, deadline=None)
def test_check_run_is_check_of_each_and_accept_run_is_accept_of_each(
    size: int, before: list[int], offset: int, run: int
) -> None:
    """A run anywhere around the top (below it too, as when a later packet read ahead was opened first):
    `check_run` answers what `check` of each number says, changes nothing, and `accept_run` of a run it
    passed leaves the window as `accept` of each in turn."""
    one, many = ReplayWindow(size), ReplayWindow(size)
    for seq in before:
        for window in (one, many):
            if window.check(seq):
                window.accept(seq)
    first = max(1, one.top + offset)
    last = first + run - 1
    state = (many.top, many.bitmap)
    expected = all(one.check(seq) for seq in range(first, last + 1))
    assert many.check_run(first, last) is expected
    assert (many.top, many.bitmap) == state
    if expected:
        for seq in range(first, last + 1):
            one.accept(seq)
        many.accept_run(first, last)
        assert (many.top, many.bitmap) == (one.top, one.bitmap)


@pytest.mark.parametrize("size", [32, 128, 4096])
def test_read_ahead_table(size: int) -> None:
    """Numbered steps of (first, last, passes?) of runs checked with `check_run` and, when they pass,
    recorded with `accept_run`: a small packet read ahead of a bulk backlog is opened first, the bulk
    behind it still passes as long as it lies inside the window, and nothing passes twice."""
    w = size
    steps = [
        (1, w // 2, True),  # 1: a bulk read in order
        (w + 1, w + 1, True),  # 2: a ping read ahead of the bulk, opened first
        (w // 2 + 1, w, True),  # 3: the bulk before it, below the top, all new
        (w // 2 + 1, w, False),  # 4: the same run again (replayed)
        (w, w + 2, False),  # 5: straddles the top, but w and w+1 were received
        (w + 2, w + w // 4, True),  # 6: the bulk after the ping, above the top
        (3 * w, 3 * w, True),  # 7: read ahead by 2w: the top moves far
        (
            w + w // 4 + 1,
            2 * w,
            False,
        ),  # 8: behind by more than the window: outside (hence --read-ahead < window)
        (2 * w + 1, 3 * w - 1, True),  # 9: the oldest numbers the window still holds, up to the top
        (0, 3, False),  # 10: RFC 4303 §3.3.3: 0 is never sent
        (3 * w + 1, 3 * w + 1, True),  # 11
        (3 * w + 1, 3 * w + 1, False),  # 12
    ]
    window = ReplayWindow(size)
    received: set[int] = set()
    for step, (first, last, expected) in enumerate(steps, 1):
        assert window.check_run(first, last) is expected, f"step {step}: run {first}-{last}"
        if expected:
            window.accept_run(first, last)
            received.update(range(first, last + 1))
        assert window.top == max(received), f"step {step}"
        assert all(not window.check(seq) for seq in received if seq > window.top - size), f"step {step}"


def test_check_run_with_the_window_off_passes_anything_but_zero() -> None:
    window = ReplayWindow(0)
    window.accept_run(1, 10)
    assert window.check_run(1, 10) and window.check_run(5, 5) and not window.check_run(0, 3)


def test_check_changes_nothing() -> None:
    window = ReplayWindow(64)
    for seq in (1, 2, 5, 9):
        window.accept(seq)
    before = (window.top, window.bitmap)
    for seq in (0, 1, 3, 9, 10, 1000, SEQ32 - 1):
        for _ in range(3):
            window.check(seq)
    assert (window.top, window.bitmap) == before
    assert window.check(3)
    assert window.check(3)  # still new: check is not accept


def test_window_zero_turns_the_check_off() -> None:
    window = ReplayWindow(0)
    for seq in (5, 5, 1, 5, 100, 2):
        assert window.check(seq)
        window.accept(seq)
    assert window.top == 100
    assert not window.check(0)  # even with no window, 0 is never a valid number


def test_seen_all_up_to_refuses_everything_at_or_below() -> None:
    window = ReplayWindow(64)
    window.seen_all_up_to(1000)
    assert window.top == 1000
    for seq in (1000, 999, 937, 500):
        assert not window.check(seq)
    assert window.check(1001)


@pytest.mark.parametrize("size", [-1, MAX_WINDOW + 1])
def test_window_size_bounds(size: int) -> None:
    with pytest.raises(ValueError, match="replay window must be 0"):
        ReplayWindow(size)


# ---------------------------------------------------------------------------------------------------------
# ESN inference, RFC 4303 Appendix A2.1


def test_infer_without_esn_is_the_low_bits() -> None:
    window = ReplayWindow(64, esn=False, top=(3 << 32) | 7)
    assert window.infer(5) == 5


@pytest.mark.parametrize(
    ("top", "seq_lo", "expected"),
    [
        # Case A: Tl >= W - 1 (W = 64): the window lies inside one 2^32 subspace.
        ((2 << 32) | 1000, 1000 - 63, (2 << 32) | (1000 - 63)),  # Seql >= Tl - W + 1: same Th
        ((2 << 32) | 1000, 1000 - 64, (3 << 32) | (1000 - 64)),  # below the window: next subspace
        ((2 << 32) | 1000, 5000, (2 << 32) | 5000),  # ahead in the same subspace
        ((2 << 32) | 63, 0, (2 << 32) | 0),  # Tl = W - 1: case A, and Tl - W + 1 = 0 is in the window
        ((0 << 32) | (SEQ32 - 10), 5, (1 << 32) | 5),  # crossing 2^32 forwards
        # Case B: Tl < W - 1: the window spans the end of the previous subspace.
        ((2 << 32) | 10, SEQ32 - 20, (1 << 32) | (SEQ32 - 20)),  # Seql >= Bl: previous subspace
        ((2 << 32) | 10, SEQ32 - 53, (1 << 32) | (SEQ32 - 53)),  # Bl itself: Tl - W + 1 mod 2^32
        ((2 << 32) | 10, SEQ32 - 54, (2 << 32) | (SEQ32 - 54)),  # below Bl: same subspace, far ahead
        ((2 << 32) | 10, 11, (2 << 32) | 11),  # ahead
        ((2 << 32) | 10, 3, (2 << 32) | 3),  # inside the window, same subspace
        ((1 << 32) | 5, SEQ32 - 20, (0 << 32) | (SEQ32 - 20)),  # back across 2^32
    ],
)
def test_esn_inference(top: int, seq_lo: int, expected: int) -> None:
    window = ReplayWindow(64, esn=True, top=top)
    assert window.infer(seq_lo) == expected


def test_esn_inference_at_the_start_never_goes_negative() -> None:
    window = ReplayWindow(64, esn=True)
    assert window.infer(1) == 1
    assert window.infer(SEQ32 - 1) == SEQ32 - 1  # no subspace below 0: Seqh stays 0


def test_esn_window_crosses_2_32() -> None:
    window = ReplayWindow(64, esn=True)
    window.seen_all_up_to(SEQ32 - 3)  # received everything up to 2^32 - 3
    arrivals = [SEQ32 - 1, 0, 1, SEQ32 - 2, 2, 0, SEQ32 - 1]
    results = []
    for lo in arrivals:
        seq = window.infer(lo)
        ok = window.check(seq)
        results.append((seq, ok))
        if ok:
            window.accept(seq)
    assert results == [
        (SEQ32 - 1, True),
        (SEQ32, True),  # low 0 after the wrap is 2^32, a valid number with ESN
        (SEQ32 + 1, True),
        (SEQ32 - 2, True),  # late, from the previous subspace, inside the window
        (SEQ32 + 2, True),
        (SEQ32, False),  # replayed
        (SEQ32 - 1, False),  # replayed across the boundary
    ]


# ---------------------------------------------------------------------------------------------------------
# Through the SA: the window moves only after the ICV passed.


def _pair(window: int = 64, esn: bool = False) -> tuple[SecurityAssociation, SecurityAssociation]:
    config = SAConfig(
        0x1000, "10.0.0.2", "10.0.0.1", "aes-cbc", bytes(range(16)), "sha256", bytes(range(32)),
        replay_window=window, esn=esn,
    ).validated()  # fmt: skip
    return SecurityAssociation(config, 0.0), SecurityAssociation(config, 0.0)


def _noop(_event: object) -> None:
    pass


def test_forged_packet_never_moves_the_window() -> None:
    sender, receiver = _pair()
    packets = [sender.encrypt(b"inner %d" % i, 4, 0.0, _noop) for i in range(1, 201)]
    assert all(isinstance(p, bytes) for p in packets)
    first = packets[0]
    far = packets[199]  # sequence number 200, far ahead of anything received
    assert isinstance(first, bytes) and isinstance(far, bytes)
    assert receiver.decrypt(first, 0.0, _noop) == (b"inner 1", 4)
    forged = bytearray(far)
    forged[-1] ^= 0x01
    assert receiver.decrypt(bytes(forged), 0.0, _noop) is Drop.AUTH_FAILED
    assert (receiver.replay.top, receiver.replay.bitmap) == (1, 1)  # unmoved by the forgery
    # Had the window moved to 200, packet 2 would now be too old; it is accepted ...
    second = packets[1]
    assert isinstance(second, bytes)
    assert receiver.decrypt(second, 0.0, _noop) == (b"inner 2", 4)
    # ... and so is the genuine packet 200, once, after which it is a replay.
    assert receiver.decrypt(far, 0.0, _noop) == (b"inner 200", 4)
    assert receiver.decrypt(far, 0.0, _noop) is Drop.REPLAYED
    assert receiver.drops[Drop.AUTH_FAILED] == 1
    assert receiver.drops[Drop.REPLAYED] == 1


def test_forged_replay_of_a_received_number_is_refused_before_the_icv() -> None:
    sender, receiver = _pair()
    packet = sender.encrypt(b"x", 4, 0.0, _noop)
    assert isinstance(packet, bytes)
    assert receiver.decrypt(packet, 0.0, _noop) == (b"x", 4)
    forged = packet[:-1] + bytes([packet[-1] ^ 1])
    assert receiver.decrypt(forged, 0.0, _noop) is Drop.REPLAYED


def test_window_zero_delivers_replays_through_the_sa() -> None:
    sender, receiver = _pair(window=0)
    packet = sender.encrypt(b"again", 4, 0.0, _noop)
    assert isinstance(packet, bytes)
    for _ in range(3):
        assert receiver.decrypt(packet, 0.0, _noop) == (b"again", 4)
    assert receiver.packets == 3


def test_esn_sa_crosses_2_32_and_the_icv_rejects_a_wrong_inference() -> None:
    sender, receiver = _pair(esn=True)
    sender.seq_out = SEQ32 - 3
    receiver.replay.seen_all_up_to(SEQ32 - 3)
    packets = [sender.encrypt(b"p%d" % i, 4, 0.0, _noop) for i in range(4)]  # 2^32-2 .. 2^32+1
    assert sender.seq_out == SEQ32 + 1
    headers = [p[4:8] for p in packets if isinstance(p, bytes)]
    assert headers == [bytes.fromhex(h) for h in ("fffffffe", "ffffffff", "00000000", "00000001")]
    order = [2, 0, 3, 1]  # out of order across the boundary
    for i in order:
        packet = packets[i]
        assert isinstance(packet, bytes)
        assert receiver.decrypt(packet, 0.0, _noop) == (b"p%d" % i, 4)
    assert receiver.replay.top == SEQ32 + 1
    # A packet really sent in subspace 0 but arriving once the receiver is far into subspace 1 is
    # inferred as subspace 2 (Appendix A case A) and fails the ICV: it is dropped, never delivered.
    old_sender, fresh_receiver = _pair(esn=True)
    old = old_sender.encrypt(b"old", 4, 0.0, _noop)
    assert isinstance(old, bytes)
    fresh_receiver.replay.seen_all_up_to((1 << 32) | 1000)
    assert fresh_receiver.decrypt(old, 0.0, _noop) is Drop.AUTH_FAILED
    assert fresh_receiver.replay.top == (1 << 32) | 1000


# ---------------------------------------------------------------------------------------------------------
# The ring (RFC 6479): the same answers as a plain bitmap, at a cost that does not grow with the window


class _BitmapWindow:
    """The window as RFC 4303 §3.4.3 states it: one bitmap, bit i for top - i (the reference model)."""

    def __init__(self, size: int) -> None:
        self.size, self.top, self.bitmap = size, 0, 0

    def check(self, seq: int) -> bool:
        if seq == 0:
            return False
        if not self.size or seq > self.top:
            return True
        return self.top - seq < self.size and not (self.bitmap >> (self.top - seq)) & 1

    def accept(self, seq: int) -> None:
        mask = (1 << self.size) - 1
        if seq > self.top:
            self.bitmap = ((self.bitmap << (seq - self.top)) | 1) & mask
            self.top = seq
        elif self.top - seq < self.size:
            self.bitmap |= 1 << (self.top - seq)


@given(
    st.sampled_from([1, 7, 8, 9, 64, 100, 128]),
    st.lists(
        st.one_of(
            st.tuples(st.just("one"), st.integers(-20, 300)),
            st.tuples(st.just("run"), st.integers(1, 40), st.integers(1, 300)),
            st.tuples(st.just("reload"), st.just(0)),
        ),
        max_size=60,
    ),
)
@settings(max_examples=300, deadline=None)
def test_ring_answers_as_the_plain_bitmap(size: int, ops: list[tuple[object, ...]]) -> None:
    """Every check of every nearby number, after any mix of accepts, runs and a save/restore of the
    bitmap (what the state store does), is what the one-bitmap model answers."""
    ring, model = ReplayWindow(size), _BitmapWindow(size)
    for op in ops:
        if op[0] == "one":
            seq = max(1, model.top + int(op[1]) - 20)  # type: ignore[call-overload]
            if model.check(seq):
                ring.accept(seq)
                model.accept(seq)
        elif op[0] == "run":
            first = model.top + int(op[1])  # type: ignore[call-overload]
            last = first + int(op[2]) - 1  # type: ignore[call-overload]
            ring.accept_run(first, last)
            for seq in range(first, last + 1):
                model.accept(seq)
        else:
            saved = (ring.top, ring.bitmap)
            ring = ReplayWindow(size)
            ring.top = saved[0]
            ring.bitmap = saved[1]
        assert (ring.top, ring.bitmap) == (model.top, model.bitmap)
        for seq in range(max(0, model.top - size - 10), model.top + 10):
            assert ring.check(seq) == model.check(seq), seq


def _check_cost(size: int) -> float:
    """The best of a few timings of 2000 checks of in-window numbers, in seconds."""
    import time

    window = ReplayWindow(size)
    window.accept_run(1, size + 1000)
    window.accept(size + 5000)  # a hole: the window is not full
    probes = [size + 4990 - i for i in range(2000)]
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for seq in probes:
            window.check(seq)
        best = min(best, time.perf_counter() - start)
    return best


def test_check_cost_does_not_grow_with_the_window() -> None:
    """Protocol review finding 6: with a bitmap of 2^20 bits a check (before the ICV) copied the whole
    bitmap, about 200 times the cost at 128; the ring makes it one byte."""
    assert _check_cost(MAX_WINDOW) < 10 * _check_cost(128)
