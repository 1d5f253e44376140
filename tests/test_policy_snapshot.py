"""The policy snapshot in shared memory: forked readers see whole snapshots, promptly, and fail closed."""

from __future__ import annotations

import os
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable

import orjson
import pytest

from gateway.policy import PolicyCache, PolicyError, PolicySet, PolicyStore, Rule, ViewHolder
from gateway.policy.model import ResourcePattern
from gateway.policy.snapshot import HEADER_SIZE, SLOT_HEADER


def policy(generation: int, rules: int | None = None, padding: int = 0) -> PolicySet:
    """A policy whose every part says which generation it was written for: a torn mix cannot pass for one.

    `padding` subjects make the snapshot large, so that copying it takes long enough for the writer to race it.
    """
    count = generation if rules is None else rules
    subjects = tuple(f"user:pad-{generation}-{index}" for index in range(padding))
    return PolicySet(
        rules=tuple(
            Rule(name=f"g{generation}-r{index}", subjects=(f"user:u{index}", "group:readers", *subjects),
                 resources=(ResourcePattern("topic", "prefix", f"gen{generation}."),),
                 operations=("read",), source=f"gen-{generation}.yaml:{index + 1}")
            for index in range(count)
        ),
        files=(f"gen-{generation}.yaml",),
    )


def consistent(generation: int, snapshot: PolicySet) -> bool:
    return snapshot == policy(generation)


def start_child(function: Callable[[], object]) -> tuple[int, int]:
    """Run `function` in a forked child; its JSON result comes back through a pipe."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        os.close(read_fd)
        code = 0
        try:
            result = {"ok": function()}
        except BaseException:
            result, code = {"error": traceback.format_exc()}, 1
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(orjson.dumps(result))
        os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def child_result(pid: int, read_fd: int):
    with os.fdopen(read_fd, "rb") as pipe:
        result = orjson.loads(pipe.read())
    os.waitpid(pid, 0)
    assert "error" not in result, result["error"]
    return result["ok"]


def test_nothing_published_means_generation_0_and_every_request_denied():
    store = PolicyStore(max_bytes=4096)
    assert store.generation() == 0
    assert store.read() == (0, PolicySet())
    engine = PolicyCache(store).engine()
    assert not engine.for_principal("alice", ("readers",)).decide("topic", "gen0.x", "read").allowed


def test_a_forked_worker_reads_what_the_supervisor_published():
    store = PolicyStore(max_bytes=1 << 20)
    published = policy(3)
    assert store.publish(published) == 1

    def worker():
        generation, snapshot = store.read()
        decision = PolicyCache(store).engine().for_principal("u1", ()).decide("topic", "gen3.orders", "read")
        return generation, snapshot.to_dict(), decision.rule

    generation, snapshot, rule = child_result(*start_child(worker))
    assert generation == 1 and PolicySet.from_dict(snapshot) == published and rule == "g3-r1"


def test_a_child_reading_in_a_loop_never_sees_a_torn_snapshot_and_sees_the_latest_promptly():
    store = PolicyStore(max_bytes=1 << 20)
    last = 200

    def reader():
        reads, generations, torn = 0, set(), []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            generation, snapshot = store.read()
            reads += 1
            generations.add(generation)
            if generation and not consistent(generation, snapshot):
                torn.append(generation)
            if generation == last:
                break
        # Then wait for nothing: the latest generation must already be there.
        seen_at = time.monotonic()
        return {"reads": reads, "generations": len(generations), "torn": torn, "seen_at": seen_at,
                "last": store.generation()}

    pid, pipe = start_child(reader)
    rng = random.Random(7)
    published_at = 0.0
    for generation in range(1, last + 1):
        assert store.publish(policy(generation)) == generation
        published_at = time.monotonic()
        time.sleep(rng.choice((0, 0, 0.0002, 0.001)))  # back-to-back publishes, and gaps readers can land in
    result = child_result(pid, pipe)
    assert result["torn"] == []
    assert result["last"] == last
    assert result["generations"] > 10, result  # the reader really raced the writer
    latency = result["seen_at"] - published_at
    print(f"reads={result['reads']} generations seen={result['generations']} latest seen after {latency * 1e3:.2f} ms")
    assert latency < 0.05


def test_a_reader_preempted_anywhere_never_sees_a_torn_snapshot():
    # Double buffering tears only when a reader stalls between reading the generation and copying the
    # slot while the writer publishes twice. Threads switching every microsecond make such stalls
    # common (a reader that skips the re-check returns torn snapshots here within a few thousand reads).
    store = PolicyStore(max_bytes=1 << 16)
    sizes = 7  # generation g has g % 7 + 1 rules, so consecutive snapshots differ in length and content
    policies = [policy(size + 1) for size in range(sizes)]
    published = threading.Event()

    def writer():
        for generation in range(1, 20_001):
            store.publish(policies[generation % sizes])
        published.set()

    reads, torn = 0, 0
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        thread = threading.Thread(target=writer)
        thread.start()
        while not published.is_set():
            generation, snapshot = store.read()
            reads += 1
            torn += generation > 0 and snapshot != policies[generation % sizes]
        thread.join()
    finally:
        sys.setswitchinterval(switch_interval)
    assert torn == 0 and reads > 100, (torn, reads)


def test_an_oversize_policy_is_refused_and_the_old_one_stays():
    store = PolicyStore(max_bytes=4096)
    store.publish(policy(1))
    with pytest.raises(PolicyError, match="more than the 4096 reserved"):
        store.publish(policy(2, rules=100))
    assert store.generation() == 1
    assert store.read() == (1, policy(1))


def test_the_cache_rebuilds_only_when_the_generation_moves():
    store = PolicyStore(max_bytes=1 << 16)
    store.publish(policy(1))
    cache = PolicyCache(store)
    engine = cache.engine()
    assert cache.engine() is engine and cache.generation == 1
    holder = ViewHolder(cache, "u0", ("readers",))
    view = holder.view()
    assert holder.view() is view
    assert view.decide("topic", "gen1.x", "read").rule == "g1-r0"

    store.publish(policy(2))
    assert cache.engine() is not engine and cache.generation == 2
    renewed = holder.view()
    assert renewed is not view
    assert renewed.decide("topic", "gen2.x", "read").rule == "g2-r0"
    assert not renewed.decide("topic", "gen1.x", "read").allowed


def test_a_corrupt_snapshot_fails_closed_until_the_next_publish():
    store = PolicyStore(max_bytes=1 << 16)
    store.publish(policy(1))
    cache = PolicyCache(store)
    assert cache.engine().for_principal("u0", ()).decide("topic", "gen1.x", "read").allowed
    store.publish(policy(2))
    slot = HEADER_SIZE + (2 & 1) * store._slot_size  # where generation 2 lives
    store._mm[slot + SLOT_HEADER.size + 10] ^= 0xFF  # flip one payload byte: the checksum no longer matches
    with pytest.raises(PolicyError, match="generation 2 is corrupt"):
        store.read()
    assert not cache.engine().for_principal("u0", ()).decide("topic", "gen2.x", "read").allowed
    assert cache.generation == 2
    store.publish(policy(3))
    assert cache.engine().for_principal("u0", ()).decide("topic", "gen3.x", "read").allowed


def test_only_the_creating_process_publishes():
    store = PolicyStore(max_bytes=4096)

    def worker():
        try:
            store.publish(policy(1))
        except RuntimeError as exc:
            return str(exc)
        return "published"

    assert "only the process that created the PolicyStore" in child_result(*start_child(worker))
    assert store.generation() == 0
