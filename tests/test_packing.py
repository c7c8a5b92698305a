"""packing.plan: exact least-cost packs under the token budget and the row bound (checked against every
partition of small inputs), and never worse than padding a whole batch to its longest text."""

from __future__ import annotations

import random

import pytest

from python_backend_models.packing import Pack, cost, plan


def _partitions(items):
    """Every set partition of ``items`` (Bell(n) of them)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        for k in range(len(part)):
            yield part[:k] + [[first] + part[k]] + part[k + 1:]
        yield [[first]] + part


def _feasible(group, lengths, max_tokens, max_rows):
    width = max(max(lengths[i], 1) for i in group)
    return len(group) <= max_rows and (len(group) == 1 or len(group) * width <= max_tokens)


def _partition_cost(part, lengths, pass_cost):
    return sum(len(g) * max(max(lengths[i], 1) for i in g) + pass_cost for g in part)


def _check_valid(packs, lengths, max_tokens, max_rows):
    seen = sorted(i for p in packs for i in p.rows)
    assert seen == list(range(len(lengths)))
    for p in packs:
        assert p.width == max(max(lengths[i], 1) for i in p.rows)
        assert _feasible(p.rows, lengths, max_tokens, max_rows)


@pytest.mark.parametrize("seed", range(40))
def test_plan_is_the_least_cost_partition_of_small_inputs(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 7)
    lengths = [rng.choice([0, 1, 5, 30, 31, 120, 300, 512]) for _ in range(n)]
    max_tokens, max_rows, pass_cost = rng.choice([64, 600, 1024, 4096]), rng.randint(1, 4), rng.choice([0, 16, 200])
    packs = plan(lengths, max_tokens=max_tokens, max_rows=max_rows, pass_cost=pass_cost)
    _check_valid(packs, lengths, max_tokens, max_rows)
    brute = min(_partition_cost(part, lengths, pass_cost) for part in _partitions(list(range(n)))
                if all(_feasible(g, lengths, max_tokens, max_rows) for g in part))
    assert cost(packs, pass_cost) == brute


def test_one_long_text_no_longer_pads_the_whole_batch():
    # The case: 31 short texts and one of 512 under a 16,384-token budget were one 32 x 512 pack.
    lengths = [40] * 31 + [512]
    packs = plan(lengths, max_tokens=16384, max_rows=64, pass_cost=64)
    assert sorted(p.width for p in packs) == [40, 512]
    assert sum(p.padded_tokens for p in packs) == 31 * 40 + 512


def test_mixed_lengths_pad_less_than_padding_to_the_longest():
    rng = random.Random(0)
    lengths = [rng.randint(30, 300) for _ in range(128)]
    packs = plan(lengths, max_tokens=16384, max_rows=64, pass_cost=64)
    _check_valid(packs, lengths, 16384, 64)
    padded = sum(p.padded_tokens for p in packs)
    assert padded < 0.75 * len(lengths) * max(lengths)  # greedy padding to the longest per pack
    assert padded < 1.1 * sum(lengths)
    assert all(len(p.rows) <= 64 for p in packs)


def test_the_fixed_cost_per_pass_merges_texts_of_equal_length():
    assert plan([50] * 10, max_tokens=16384, pass_cost=1) == [Pack(rows=tuple(range(10)), width=50)]
    assert len(plan([50] * 10, max_tokens=16384, max_rows=3, pass_cost=1)) == 4


def test_an_over_budget_text_gets_a_pack_of_its_own():
    packs = plan([900, 10, 10], max_tokens=512, pass_cost=64)
    assert packs[0] == Pack(rows=(0,), width=900)
    assert plan([], max_tokens=512) == []


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="max_rows"):
        plan([1], max_tokens=10, max_rows=0)
