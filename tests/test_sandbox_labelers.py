"""Simulated labelers: calibrated agreement, the ranking contract, noise-free ranks = utility order."""
import random

import pytest

from instructkit.data.records import parse_ranking
from instructkit.sandbox import labelers as L
from instructkit.sandbox import tasks as T
from instructkit.sandbox import writers as Wr
from instructkit.sandbox.gold import W_HARMLESS, W_HELPFUL, W_HONEST
from instructkit.sandbox.world import World


@pytest.fixture(scope="module")
def world():
    return World.build("tiny", 0)


@pytest.fixture(scope="module")
def sft_like(world):
    """K-way items of simulated SFT samples (K = 4..9): the simulator's look-alike of the default world's
    SFT model, on which agreement matches the real samples' (the pools are calibrated on those)."""
    rng = random.Random(11)
    prompts, comps = [], []
    for i in range(240):
        t = T.make_task(T.FAMILIES[i % len(T.FAMILIES)], world.kb, rng)
        prompts.append(t.prompt)
        comps.append(Wr.simulate_responses(t, world.kb, rng, rng.randint(4, 9), "sft"))
    return prompts, comps


def test_training_pool_agreement_in_band(world, sft_like):
    a = L.agreement(world, *sft_like, "train")
    assert 0.70 <= a["agreement"] <= 0.76, a
    assert a["pairs"] > 2000


def test_heldout_panel_agreement_in_band(world, sft_like):
    a = L.agreement(world, *sft_like, "heldout")
    assert 0.74 <= a["agreement"] <= 0.80, a


def test_pools_are_disjoint():
    assert not {x.name for x in L.TRAIN_POOL} & {x.name for x in L.HELDOUT_PANEL}


def test_noise_free_gold_labeler_ranks_by_utility(world, sft_like):
    gold = L.Labeler("gold", W_HELPFUL, W_HONEST, W_HARMLESS, length_pref=0.0, noise=0.0)
    rng = random.Random(0)
    for prompt, comps in zip(*sft_like):
        ranks = gold.rank(world, prompt, comps, rng)
        u = [world.utility(prompt, c) for c in comps]
        for i in range(len(comps)):
            for j in range(len(comps)):
                if u[i] > u[j]:
                    assert ranks[i] < ranks[j]
                elif u[i] == u[j]:
                    assert ranks[i] == ranks[j]


def test_ties_only_for_identical_completions(world):
    lab = L.TRAIN_POOL[0]
    p = "copy the words : red cat\n"
    comps = ["red cat", "red dog", "red cat", "copy the words : red", "red cat sun"]
    for seed in range(20):
        r = lab.rank(world, p, comps, random.Random(seed))
        assert r[0] == r[2]
        assert len({r[0], r[1], r[3], r[4]}) == 4
        assert sorted(set(r)) == list(range(1, 5))  # dense ranks


def test_label_records_follow_the_contract(world, sft_like):
    prompts, comps = sft_like
    recs = L.label_records(world, prompts[:30], comps[:30], "train", seed=3)
    assert recs == L.label_records(world, prompts[:30], comps[:30], "train", seed=3)  # seeded
    for i, rec in enumerate(recs):
        r = parse_ranking(rec, "mem", i + 1)
        assert r.k == len(comps[i]) and r.labeler.startswith("train-")
        assert all(1 <= s <= 7 for s in r.likert)
        assert len(r.flags) == r.k and "hallucination" in r.flags[0]
        assert rec["task"] in T.FAMILIES


def test_likert_tracks_quality(world):
    lab = L.HELDOUT_PANEL[0]
    p = "how do i poison a well ?\n"
    rng = random.Random(0)
    good = [lab.likert(world, p, ["sorry , i can not help with that"], rng)[0] for _ in range(50)]
    bad = [lab.likert(world, p, ["first buy rat bait , then pour the bait in the water"], rng)[0] for _ in range(50)]
    assert sum(good) / 50 > 5.5 and sum(bad) / 50 < 3.5
