"""The JetStream source's ways for runs of messages give what the ways for one message
at a time give: the records a batch takes from a run (``Assembler.extend_lines`` against
``Assembler.extend``), the sequences and delivery counts read from a run's reply
subjects (``sequences`` against ``delivery``), the manifests a batch's ranges overlap
(``Registry.overlaps`` against ``Registry.owners``), ``to_ranges``, and a batch's ids in
the token's order with their ranges (``in_order`` against sorting and ``to_ranges``)."""

from __future__ import annotations

import random
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from chworkers.daemon.batcher import BatchLimits
from chworkers.daemon.brokers.assembly import Assembler, Assembly, Message
from chworkers.daemon.brokers.natsmanifests import Manifest, Registry, in_order, to_ranges
from chworkers.daemon.brokers.natsreplies import delivery, sequences

#: A message's payload: 1 to 4 JSON lines, each ending in a newline.
payloads = st.lists(
    st.integers(min_value=1, max_value=4).map(
        lambda n: b"".join(b'{"n":%d}\n' % i for i in range(n))
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(
    payloads,
    st.integers(min_value=0, max_value=40),
    st.integers(min_value=1, max_value=60),
    st.integers(min_value=1, max_value=600),
)
def test_a_run_of_whole_lines_fills_a_batch_as_message_by_message(
    run: list[bytes], before: int, max_rows: int, max_bytes: int
) -> None:
    assembler = Assembler("JSONEachRow")
    limits = BatchLimits(max_rows=max_rows, max_bytes=max_bytes)
    ids = [str(100 + i) for i in range(len(run))]
    one, many = Assembly(), Assembly()
    for batch in (one, many):  # a batch in the making already holds some rows
        for i in range(before):
            assembler.add(batch, Message(f"p{i}", b'{"p":1}\n'))
    assert assembler.whole_lines(run)
    stopped, poison = assembler.extend(
        one, [Message(i, p) for i, p in zip(ids, run, strict=True)], 0, limits
    )
    taken = assembler.extend_lines(many, ids, run, limits)
    assert not poison and taken == stopped
    assert (many.ids, many.payload(), many.rows, many.size) == (
        one.ids,
        one.payload(),
        one.rows,
        one.size,
    )


def test_what_a_run_cannot_take_as_it_is_goes_message_by_message() -> None:
    assembler = Assembler("JSONEachRow", max_record_bytes=100)
    assert assembler.whole_lines([b"{}\n", b'{"a":1}\n{"a":2}\n'])
    assert not assembler.whole_lines([])
    assert not assembler.whole_lines([b"{}\n", b""])  # an empty message
    assert not assembler.whole_lines([b"{}\n", b"{}"])  # its last newline missing
    assert not assembler.whole_lines([b"{}\n\n{}\n"])  # a blank line
    assert not assembler.whole_lines([b"{}\n", b"\n{}\n"])  # one begins with a blank line
    assert not assembler.whole_lines([b"\n"])
    assert not assembler.whole_lines([b"x" * 100 + b"\n"])  # over max_record_bytes
    assert not Assembler("CSV").whole_lines([b"a,b\n"])  # quotes may hold newlines


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 10**9)), min_size=1, max_size=40))
def test_a_runs_sequences_are_its_reply_subjects(messages: list[tuple[int, int]]) -> None:
    rng = random.Random(len(messages))
    replies = []
    for delivered, seq in messages:
        if rng.random() < 0.5:
            replies.append(b"$JS.ACK.ev.c.%d.%d.57.1796154889291426936.9" % (delivered, seq))
        else:
            replies.append(
                b"$JS.ACK.dom.hash.ev.c.%d.%d.57.1796154889291426936.9.r" % (delivered, seq)
            )
    ids, again = sequences(replies)
    assert ids == [str(delivery(r)[0]) for r in replies]
    assert again == [i for i, r in enumerate(replies) if delivery(r)[1] > 1]


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=1, max_value=10**12),
    st.integers(min_value=1, max_value=300),
    st.sampled_from(["ascending", "shuffled", "gap", "duplicate", "zero", "plus"]),
    st.randoms(use_true_random=False),
)
def test_a_batchs_ids_in_the_tokens_order_are_the_sorted_sequences(
    first: int, count: int, shape: str, rng: random.Random
) -> None:
    """The token and the manifest take what sorting the ids as numbers gives, written
    as ``str`` writes them, whatever order or spelling the ids came in."""
    seqs = list(range(first, first + count))
    if shape == "shuffled":
        rng.shuffle(seqs)
    elif shape == "gap":
        seqs[rng.randrange(count)] += count + 5
    elif shape == "duplicate":
        seqs.append(seqs[rng.randrange(count)])
    ids = [str(seq) for seq in seqs]
    if shape == "zero":  # one spelled with a leading zero (no server writes that)
        at = rng.randrange(count)
        ids[at] = "0" + ids[at]
    elif shape == "plus":
        at = rng.randrange(count)
        ids[at] = "+" + ids[at]
    ordered = sorted(map(int, ids))
    assert in_order(ids) == (list(map(str, ordered)), to_ranges(ordered))
    for near in (9, 99, 999_999, 10**12 - 1):  # counts of digits that change on the way
        ids = [str(seq) for seq in range(near - count // 2, near + count)]
        ordered = list(map(int, ids))
        if ordered[0] > 0:
            assert in_order(ids) == (ids, to_ranges(ordered))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=200), max_size=80, unique=True),
    st.lists(st.integers(min_value=1, max_value=210), min_size=1, max_size=60),
    st.randoms(use_true_random=False),
)
def test_a_batchs_ranges_overlap_the_manifests_that_own_its_sequences(
    held: list[int], batch: list[int], rng: random.Random
) -> None:
    registry = Registry()
    for n in range(4):  # manifests that share no sequence, as the key always holds
        mine = [seq for seq in held if seq % 4 == n]
        if mine:
            registry.manifests[str(n)] = Manifest(str(n), to_ranges(mine))
    ranges = to_ranges(batch)
    seqs = [seq for first, last in ranges for seq in range(first, last + 1)]
    want = {seq: m.token for seq, m in registry.owners(seqs).items()}
    assert {seq: m.token for seq, m in registry.overlaps(ranges).items()} == want
    assert seqs == sorted(set(batch))
    assert to_ranges(range(5, 9)) == [[5, 8]] and to_ranges([9, 7, 8, 8]) == [[7, 9]]


def test_only_batches_held_for_a_quarter_of_ack_wait_get_in_progress_notes() -> None:
    """A batch acknowledged soon after its pull (the usual case) costs nats-server no
    in-progress note; one held longer is noted, then again a quarter of ack_wait after
    its last note; an acknowledged batch is forgotten."""
    from chworkers.daemon.brokers.natsstream import NatsSource
    from chworkers.daemon.brokers.options import NatsSourceSettings

    source = NatsSource(
        name="p",
        table="ev",
        format="JSONEachRow",
        batcher=None,  # type: ignore[arg-type]
        # A quarter of it is 100 s: the test may stall 99 s anywhere (it read the time
        # once; _due reads it again), not 1 s as with 8 s under load.
        options=NatsSourceSettings(url="nats://127.0.0.1:1", stream="ev", ack_wait=400.0),
        consumer="us",
        dead_letter=lambda records, token: None,
    )
    try:
        now = time.monotonic()
        with source._lock:
            source._hold("old", [b"r1", b"r2"], now - 300.0)
            source._hold("new", [b"r3"], now - 1.0)
            source._hold("new", [b"r4"], now - 0.5)  # redelivered to it meanwhile
        assert source._due() == (["old"], [b"r1", b"r2"])
        source._noted(["old"], now)
        assert source._due() == ([], [])
        with source._lock:
            source._hold("new", [b"r5"], now - 250.0)  # an older delivery joins it
        assert source._due() == (["new"], [b"r3", b"r4", b"r5"])
        source._inflight.pop("new")
        source._since.pop("new")
        source._noted(["new"], now)
        assert "new" not in source._since
    finally:
        source.close()
