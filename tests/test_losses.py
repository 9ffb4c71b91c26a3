"""instructkit.losses against values computed by hand on small fixed tensors.

Every expected number below is written out with its arithmetic; none comes from re-running
the formula under test. Useful constants:
  log sigmoid(x) = -log(1 + e^-x):  x=1 -> -0.31326, x=2 -> -0.12693, x=3 -> -0.04859,
  x=-1 -> -1.31326, x=0 -> -log 2 = -0.69315, x=0.3 -> -log(1.74082) = -0.55436,
  x=-0.3 -> -0.55436 - 0.3 = -0.85436.
"""

import math

import pytest
import torch
from torch.testing import assert_close

from instructkit.losses import (
    dpo_loss,
    entropy_from_logits,
    explained_variance,
    gae,
    ipo_loss,
    kl_controller_update,
    kl_estimators,
    kto_kl_estimate,
    kto_loss,
    lm_loss,
    log_odds,
    masked_mean,
    masked_var,
    orpo_loss,
    pairwise_accuracy,
    ppo_policy_loss,
    ppo_value_loss,
    ranking_loss,
    ranking_pairs,
    rloo_advantages,
    shaped_rewards,
    slic_loss,
    token_logprobs,
    whiten,
)

torch.set_num_threads(1)
ATOL = dict(atol=1e-5, rtol=1e-5)


def t(*rows, dtype=torch.float32):
    return torch.tensor(rows if len(rows) > 1 else rows[0], dtype=dtype)


# ----------------------------------------------------------------------------- masked statistics


def test_masked_mean_all_and_per_row():
    x = t([1.0, 2.0, 3.0], [4.0, 5.0, float("nan")])
    mask = t([1, 1, 0], [1, 0, 0])
    # (1 + 2 + 4) / 3 = 2.33333; the nan sits under mask 0 and must not leak
    assert_close(masked_mean(x, mask), torch.tensor(7 / 3), **ATOL)
    # row 0: (1 + 2) / 2 = 1.5; row 1: 4 / 1 = 4
    assert_close(masked_mean(x, mask, dim=1), t([1.5, 4.0]), **ATOL)
    # nothing selected -> 0, not nan
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


def test_masked_var_unbiased_and_biased():
    x = t([1.0, 2.0, 3.0, 100.0])
    mask = t([1, 1, 1, 0])
    # mean 2, squared deviations 1 + 0 + 1 = 2; unbiased 2/2 = 1, biased 2/3 = 0.66667
    assert_close(masked_var(x, mask), torch.tensor(1.0), **ATOL)
    assert_close(masked_var(x, mask, unbiased=False), torch.tensor(2 / 3), **ATOL)


def test_whiten_mean_zero_var_one_over_masked_entries():
    x = t([1.0, 2.0, 3.0, 4.0, 1000.0])
    mask = t([1, 1, 1, 1, 0])
    # mean 2.5, unbiased var (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3, sd 1.29099
    # (x - 2.5) / 1.29099 = [-1.16190, -0.38730, 0.38730, 1.16190]; masked slot -> 0
    out = whiten(x, mask)
    assert_close(out, t([-1.16190, -0.38730, 0.38730, 1.16190, 0.0]), atol=1e-4, rtol=0)
    assert_close(masked_mean(out, mask), torch.tensor(0.0), **ATOL)
    assert_close(masked_var(out, mask), torch.tensor(1.0), atol=1e-5, rtol=0)


def test_whiten_shift_mean_false_keeps_mean():
    x = t([1.0, 2.0, 3.0, 4.0])
    mask = torch.ones(4)
    # same scaling, then + 2.5: [1.33810, 2.11270, 2.88730, 3.66190]
    out = whiten(x, mask, shift_mean=False)
    assert_close(out, t([1.33810, 2.11270, 2.88730, 3.66190]), atol=1e-4, rtol=0)
    assert_close(out.mean(), torch.tensor(2.5), **ATOL)
    assert_close(out.var(), torch.tensor(1.0), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- language modelling

# logits [0, 2 ln 3]: at T=1 softmax = [1, 9] / 10; at T=2 the logits are [0, ln 3] -> [1, 3] / 4
LN3 = math.log(3.0)


def test_token_logprobs_with_temperature():
    logits = t([[[0.0, 2 * LN3], [0.0, 2 * LN3]]])  # (B=1, T=2, V=2)
    labels = torch.tensor([[1, 0]])
    # T=1: [log 0.9, log 0.1] = [-0.10536, -2.30259]
    assert_close(token_logprobs(logits, labels), t([[-0.10536, -2.30259]]), **ATOL)
    # T=2: [log 0.75, log 0.25] = [-0.28768, -1.38629]
    assert_close(token_logprobs(logits, labels, temperature=2.0), t([[-0.28768, -1.38629]]), **ATOL)


def test_token_logprobs_three_way():
    logits = t([[[1.0, 2.0, 3.0]]])
    # logsumexp(1, 2, 3) = log(e + e^2 + e^3) = log(30.19287) = 3.40761; label 2: 3 - 3.40761
    assert_close(token_logprobs(logits, torch.tensor([[2]])), t([[-0.40761]]), **ATOL)


def test_entropy_from_logits():
    # uniform over 4 -> log 4 = 1.38629
    assert_close(entropy_from_logits(torch.zeros(1, 1, 4)), t([[1.38629]]), **ATOL)
    logits = t([[[0.0, 2 * LN3]]])
    # T=1: p = [0.1, 0.9]: -(0.1 ln 0.1 + 0.9 ln 0.9) = 0.23026 + 0.09482 = 0.32508
    assert_close(entropy_from_logits(logits), t([[0.32508]]), **ATOL)
    # T=2: p = [0.25, 0.75]: -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.34657 + 0.21576 = 0.56233
    assert_close(entropy_from_logits(logits, temperature=2.0), t([[0.56233]]), **ATOL)


def test_lm_loss_masks_prompt_and_padding():
    logits = t([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [9.0, -9.0, 0.0]]])  # (1, 3, 3)
    labels = torch.tensor([[2, 0, -100]])
    loss_mask = t([[1, 1, 0]])
    # position 0: 3.40761 - 3 = 0.40761; position 1: uniform over 3 -> log 3 = 1.09861
    # mean (0.40761 + 1.09861) / 2 = 0.75311; position 2 (label -100) is masked
    assert_close(lm_loss(logits, labels, loss_mask), torch.tensor(0.75311), **ATOL)


# ----------------------------------------------------------------------------- reward model


def test_ranking_loss_k3_equals_mean_pairwise_bradley_terry():
    scores = t([[2.0, 1.0, 0.0]])
    ranks = torch.tensor([[1, 2, 3]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    loss, stats = ranking_loss(scores, ranks, valid)
    # C(3,2) = 3 pairs, margins 2-1=1, 2-0=2, 1-0=1:
    # (0.31326 + 0.12693 + 0.31326) / 3 = 0.25115
    assert_close(loss, torch.tensor(0.25115), **ATOL)
    assert stats["n_pairs"] == 3
    assert_close(stats["accuracy"], torch.tensor(1.0))
    assert_close(stats["margin"], torch.tensor(4 / 3), **ATOL)  # (1 + 2 + 1) / 3


def test_ranking_loss_drops_tied_pairs():
    scores = t([[0.0, 1.0, 0.0]])
    ranks = torch.tensor([[1, 1, 2]])  # 0 and 1 tie: only (0, 2) and (1, 2) are pairs
    valid = torch.ones(1, 3, dtype=torch.bool)
    loss, stats = ranking_loss(scores, ranks, valid)
    # margins 0 - 0 = 0 -> log 2 = 0.69315; 1 - 0 = 1 -> 0.31326; P = 2 (not C(3,2) = 3)
    # (0.69315 + 0.31326) / 2 = 0.50320
    assert_close(loss, torch.tensor(0.50320), **ATOL)
    assert stats["n_pairs"] == 2
    # score tie counts 0.5, the other pair 1: (0.5 + 1) / 2 = 0.75
    assert_close(stats["accuracy"], torch.tensor(0.75))


def mixed_batch():
    nan = float("nan")
    scores = t(
        [1.0, 0.0, nan, float("inf")],  # K=2, two padding slots holding garbage
        [3.0, 1.0, 2.0, 0.0],  # K=4 with a tie between slots 1 and 2
        [5.0, 6.0, 7.0, nan],  # K=3, all tied: no pair, must not count as a prompt
    )
    ranks = torch.tensor([[2, 1, 0, 0], [1, 2, 2, 3], [1, 1, 1, 0]])
    valid = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    return scores, ranks, valid


def test_ranking_loss_mixed_k_with_ties_is_mean_over_prompts():
    scores, ranks, valid = mixed_batch()
    scores.requires_grad_(True)
    loss, stats = ranking_loss(scores, ranks, valid)
    # prompt 0: slot 1 beats slot 0, margin 0 - 1 = -1 -> 1.31326 (1 pair)
    # prompt 1: pairs (0,1) m=2, (0,2) m=1, (0,3) m=3, (1,3) m=1, (2,3) m=2; tie (1,2) dropped
    #   (0.12693 + 0.31326 + 0.04859 + 0.31326 + 0.12693) / 5 = 0.92897 / 5 = 0.18579
    # prompt 2: no pair -> excluded. Loss = (1.31326 + 0.18579) / 2 = 0.74953
    # (pooling pairs instead would give (1.31326 + 0.92897) / 6 = 0.37370)
    assert_close(loss, torch.tensor(0.74953), **ATOL)
    assert stats["n_pairs"] == 6
    assert_close(stats["accuracy"], torch.tensor(5 / 6), **ATOL)  # only prompt 0's pair is wrong
    assert_close(stats["margin"], torch.tensor(8 / 6), **ATOL)  # (-1 + 2 + 1 + 3 + 1 + 2) / 6
    loss.backward()
    grad = scores.grad
    assert torch.isfinite(grad).all()
    # padding and the all-tied prompt receive no gradient
    assert grad[0, 2:].abs().sum() == 0 and grad[2].abs().sum() == 0
    # d/dr_w of -log sigmoid(r_w - r_l) at margin -1 is -(1 - sigmoid(-1)) = -0.73106,
    # divided by 1 pair and by 2 prompts: -0.36553 for slot 1, +0.36553 for slot 0
    assert_close(grad[0, :2], t([0.36553, -0.36553]), **ATOL)


def test_ranking_loss_without_any_pair_is_zero_not_nan():
    scores = torch.zeros(2, 3, requires_grad=True)
    all_tied = torch.ones(2, 3, dtype=torch.long)
    loss, stats = ranking_loss(scores, all_tied, torch.ones(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0 and stats["n_pairs"] == 0
    loss.backward()  # still differentiable
    assert scores.grad.abs().sum() == 0


def test_ranking_pairs_and_pairwise_accuracy():
    scores, ranks, valid = mixed_batch()
    b, w, l = ranking_pairs(ranks, valid)
    # row 0's padding holds rank 0 ("better" than rank 1) but is invalid, so only (1 beats 0)
    got = list(zip(b.tolist(), w.tolist(), l.tolist()))
    assert got == [(0, 1, 0), (1, 0, 1), (1, 0, 2), (1, 0, 3), (1, 1, 3), (1, 2, 3)]
    assert_close(pairwise_accuracy(scores, ranks, valid), torch.tensor(5 / 6), **ATOL)


# ----------------------------------------------------------------------------- PPO


def test_kl_estimators():
    logp, ref = t([-1.0, -2.0]), t([-2.0, -1.0])
    kl = kl_estimators(logp, ref)
    # k1 = logp - ref = [1, -1]
    assert_close(kl["k1"], t([1.0, -1.0]))
    # k3 = e^(ref - logp) - 1 - (ref - logp): e^-1 - 1 + 1 = 0.36788; e^1 - 1 - 1 = 0.71828
    assert_close(kl["k3"], t([0.36788, 0.71828]), **ATOL)
    # k2 = 0.5 * (+-1)^2
    assert_close(kl["k2"], t([0.5, 0.5]))


def test_shaped_rewards_score_at_last_real_token():
    logp = t([-1.0, -2.0, -1.0, -5.0], [-1.0, -1.0, -3.0, -3.0], [-1.0, -1.0, -1.0, -1.0])
    ref = t([-2.0, -2.0, -3.0, 0.0], [-0.5, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0])
    mask = t([1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0])
    scores = t([2.0, -1.0, 7.0])
    rewards, kl = shaped_rewards(scores, logp, ref, mask, kl_coef=0.1)
    # row 0: logp - ref = [1, 0, 2, (masked)]; -0.1 * kl = [-0.1, 0, -0.2]; +2 at t=2 -> 1.8
    # row 1: logp - ref = [-0.5, 0, ...]; -0.1 * kl = [0.05, 0]; -1 at t=1 -> -1.0
    # row 2: no real token: no score, all 0
    assert_close(rewards, t([-0.1, 0.0, 1.8, 0.0], [0.05, -1.0, 0.0, 0.0], [0.0] * 4), **ATOL)
    assert_close(kl, t([1.0, 0.0, 2.0, 0.0], [-0.5, 0.0, 0.0, 0.0], [0.0] * 4), **ATOL)


# hand GAE, gamma 1, lam 0.95, rewards [0, 0, 1], values [0.5, 0.6, 0.7], V after the end = 0:
#   t=2: delta = 1 + 0 - 0.7 = 0.3;   A2 = 0.3
#   t=1: delta = 0 + 0.7 - 0.6 = 0.1; A1 = 0.1 + 0.95 * 0.3 = 0.385
#   t=0: delta = 0 + 0.6 - 0.5 = 0.1; A0 = 0.1 + 0.95 * 0.385 = 0.46575
#   returns = A + V = [0.96575, 0.985, 1.0]
GAE_ADV = [0.46575, 0.385, 0.3]
GAE_RET = [0.96575, 0.985, 1.0]


def test_gae_one_row_by_hand():
    rewards, values = t([[0.0, 0.0, 1.0]]), t([[0.5, 0.6, 0.7]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.95)
    assert_close(adv, t([GAE_ADV]), **ATOL)
    assert_close(ret, t([GAE_RET]), **ATOL)


def test_gae_masked_tail_bootstraps_zero():
    # the tail holds large rewards and values that must neither leak in nor bootstrap
    rewards = t([[0.0, 0.0, 1.0, 5.0, 5.0]])
    values = t([[0.5, 0.6, 0.7, 9.0, 9.0]])
    mask = t([[1, 1, 1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    assert_close(adv, t([GAE_ADV + [0.0, 0.0]]), **ATOL)
    assert_close(ret, t([GAE_RET + [0.0, 0.0]]), **ATOL)


def test_gae_left_padding_is_skipped():
    mask = t([[0, 1, 1, 1]])
    adv, ret = gae(t([[3.0, 0.0, 0.0, 1.0]]), t([[4.0, 0.5, 0.6, 0.7]]), mask, gamma=1.0, lam=0.95)
    assert_close(adv, t([[0.0] + GAE_ADV]), **ATOL)
    assert_close(ret, t([[0.0] + GAE_RET]), **ATOL)


def test_gae_lam_one_gives_discounted_returns():
    # lam = 1: returns are the discounted reward sums, whatever the values
    # [1 + 0.9*0 + 0.81*2, 0 + 0.9*2, 2] = [2.62, 1.8, 2.0]
    _, ret = gae(t([[1.0, 0.0, 2.0]]), t([[0.3, -4.0, 1.0]]), torch.ones(1, 3), gamma=0.9, lam=1.0)
    assert_close(ret, t([[2.62, 1.8, 2.0]]), **ATOL)


def test_rloo_advantages_by_hand():
    # two prompts x 3 samples; shaped rewards summed over the real tokens give returns
    #   group 1: [1 + 0.5, 2, 0 (masked 9 ignored)] = [1.5, 2.0, 0.0]
    #     baselines: (2+0)/2 = 1.0, (1.5+0)/2 = 0.75, (1.5+2)/2 = 1.75 -> adv [0.5, 1.25, -1.75]
    #   group 2: [3, 3, 0] -> baselines [1.5, 1.5, 3] -> adv [1.5, 1.5, -3.0]
    rewards = t([[1.0, 0.5], [2.0, 0.0], [0.0, 9.0], [3.0, 0.0], [0.0, 3.0], [0.0, 0.0]])
    mask = t([[1, 1], [1, 0], [1, 0], [1, 1], [1, 1], [1, 1]])
    adv = rloo_advantages(rewards, mask, group_size=3)
    expected = t([[0.5, 0.5], [1.25, 0.0], [-1.75, 0.0], [1.5, 1.5], [1.5, 1.5], [-3.0, -3.0]])
    assert_close(adv, expected, **ATOL)
    with pytest.raises(ValueError):
        rloo_advantages(rewards, mask, group_size=4)  # 6 rows are not groups of 4
    with pytest.raises(ValueError):
        rloo_advantages(rewards, mask, group_size=1)  # no other sample to be the baseline


@pytest.mark.parametrize(
    "kl, expected",
    [
        (6.0, 0.1),  # e = 6/6 - 1 = 0: unchanged
        (6.6, 0.100512),  # e = 0.1: 0.1 * (1 + 0.1 * 512 / 10000) = 0.1 * 1.00512
        (9.0, 0.101024),  # e = 0.5 clipped to 0.2: 0.1 * (1 + 0.2 * 0.0512) = 0.1 * 1.01024
        (0.0, 0.098976),  # e = -1 clipped to -0.2: 0.1 * (1 - 0.01024)
    ],
)
def test_kl_controller_update(kl, expected):
    new = kl_controller_update(beta=0.1, kl=kl, target=6.0, horizon=10000, n_steps=512)
    assert new == pytest.approx(expected, abs=1e-9)


def test_ppo_policy_loss_clipping_and_stats():
    # ratios [1.5, 0.5, 1.0, 1.1, 0.5] and a masked sixth token holding junk
    ratio = t([[1.5, 0.5, 1.0, 1.1, 0.5, 50.0]])
    old = t([[-1.0, -2.0, -0.5, -3.0, -1.5, -1.0]])
    logp = (old + ratio.log()).requires_grad_(True)
    adv = t([[1.0, 1.0, -1.0, -2.0, -1.0, 100.0]])
    mask = t([[1, 1, 1, 1, 1, 0]])
    loss, stats = ppo_policy_loss(logp, old, adv, mask, clip_range=0.2)
    # pg_loss1 = -A r, pg_loss2 = -A clip(r, 0.8, 1.2), max of the two:
    #   t0: A=1,  r=1.5: -1.5 vs -1.2 -> -1.2 (clipped)
    #   t1: A=1,  r=0.5: -0.5 vs -0.8 -> -0.5 (unclipped is the pessimistic one)
    #   t2: A=-1, r=1.0:  1.0 vs  1.0 ->  1.0
    #   t3: A=-2, r=1.1:  2.2 vs  2.2 ->  2.2
    #   t4: A=-1, r=0.5:  0.5 vs  0.8 ->  0.8 (clipped)
    # mean (-1.2 - 0.5 + 1 + 2.2 + 0.8) / 5 = 2.3 / 5 = 0.46
    assert_close(loss, torch.tensor(0.46), **ATOL)
    # clipped term active on t0 and t4 only: 2/5 (|r - 1| > 0.2 would also count t1)
    assert_close(stats["clipfrac"], torch.tensor(0.4), **ATOL)
    # 0.5 * mean(ln1.5^2, ln0.5^2, 0, ln1.1^2, ln0.5^2)
    # = 0.5 * (0.164402 + 0.480453 + 0 + 0.009084 + 0.480453) / 5 = 0.113439
    assert_close(stats["approx_kl"], torch.tensor(0.113439), **ATOL)
    assert_close(stats["ratio"], torch.tensor(0.92), **ATOL)  # (1.5 + 0.5 + 1 + 1.1 + 0.5) / 5
    loss.backward()
    g = logp.grad[0]
    # clipped tokens and the masked one get no gradient; d/dlogp (-A r)/5 = -A r / 5 elsewhere
    assert g[0] == 0 and g[4] == 0 and g[5] == 0
    assert_close(g[1:4], t([-0.1, 0.2, 0.44]), **ATOL)  # -0.5/5, 1/5, 2.2/5


def test_ppo_value_loss_clipping():
    old = torch.zeros(1, 4)
    values = t([[0.5, -0.1, 0.3, 7.0]]).requires_grad_(True)
    returns = t([[1.0, 0.0, -1.0, 0.0]])
    mask = t([[1, 1, 1, 0]])
    loss, stats = ppo_value_loss(values, old, returns, mask, clip_range=0.2)
    # t0: v=0.5, v_clip=0.2:  (0.5-1)^2 = 0.25, (0.2-1)^2 = 0.64 -> 0.64 (clipped active)
    # t1: v=-0.1 within the clip: 0.01 both -> 0.01
    # t2: v=0.3, v_clip=0.2:  (1.3)^2 = 1.69, (1.2)^2 = 1.44 -> 1.69
    # 0.5 * (0.64 + 0.01 + 1.69) / 3 = 0.39
    assert_close(loss, torch.tensor(0.39), **ATOL)
    assert_close(stats["vf_clipfrac"], torch.tensor(1 / 3), **ATOL)
    loss.backward()
    assert values.grad[0, 0] == 0 and values.grad[0, 3] == 0  # clipped, masked
    assert_close(values.grad[0, 2], torch.tensor(1.3 / 3), **ATOL)  # 0.5 * 2 * 1.3 / 3


def test_explained_variance():
    returns = t([[1.0, 2.0, 3.0, 4.0, 99.0]])
    mask = t([[1, 1, 1, 1, 0]])
    assert_close(explained_variance(returns.clone(), returns, mask), torch.tensor(1.0))
    assert_close(explained_variance(torch.zeros(1, 5), returns, mask), torch.tensor(0.0), **ATOL)
    # residual [1, 0, 0, 0]: var = (0.75^2 + 3 * 0.25^2) / 3 = 0.25; var(R) = 5/3
    # 1 - 0.25 / (5/3) = 0.85
    values = t([[0.0, 2.0, 3.0, 4.0, 0.0]])
    assert_close(explained_variance(values, returns, mask), torch.tensor(0.85), **ATOL)
    assert torch.isnan(explained_variance(values, torch.ones(1, 5), mask))


# ----------------------------------------------------------------------------- direct preference


def test_dpo_equal_logprobs_is_log2():
    z = torch.full((3,), -7.0)
    losses, stats = dpo_loss(z, z, z, z, beta=0.1)
    assert_close(losses, torch.full((3,), 0.69315), **ATOL)  # -log sigmoid(0) = log 2
    assert stats["accuracy"].sum() == 0  # a tie is not a win


def test_dpo_by_hand_and_stats():
    # pi_w - ref_w = -10 + 12 = 2; pi_l - ref_l = -11 + 10 = -1; h = 3; beta h = 0.3
    pi_w, pi_l, ref_w, ref_l = t([-10.0]), t([-11.0]), t([-12.0]), t([-10.0])
    losses, stats = dpo_loss(pi_w, pi_l, ref_w, ref_l, beta=0.1)
    assert_close(losses, t([0.55436]), **ATOL)  # -log sigmoid(0.3)
    assert_close(stats["chosen_reward"], t([0.2]), **ATOL)
    assert_close(stats["rejected_reward"], t([-0.1]), **ATOL)
    assert_close(stats["margin"], t([0.3]), **ATOL)
    assert_close(stats["accuracy"], t([1.0]))
    # cDPO e = 0.1: 0.9 * 0.55436 + 0.1 * 0.85436 = 0.58436
    losses, _ = dpo_loss(pi_w, pi_l, ref_w, ref_l, beta=0.1, label_smoothing=0.1)
    assert_close(losses, t([0.58436]), **ATOL)


def test_dpo_label_smoothing_half_is_symmetric():
    pi_w, pi_l, ref_w, ref_l = t([-10.0]), t([-11.0]), t([-12.0]), t([-10.0])
    fwd, _ = dpo_loss(pi_w, pi_l, ref_w, ref_l, beta=0.1, label_smoothing=0.5)
    swapped, _ = dpo_loss(pi_l, pi_w, ref_l, ref_w, beta=0.1, label_smoothing=0.5)
    # 0.5 * (0.55436 + 0.85436) = 0.70436 both ways
    assert_close(fwd, t([0.70436]), **ATOL)
    assert_close(swapped, t([0.70436]), **ATOL)
    plain, _ = dpo_loss(pi_l, pi_w, ref_l, ref_w, beta=0.1, label_smoothing=0.0)
    assert_close(plain, t([0.85436]), **ATOL)  # e = 0 is not symmetric


def test_dpo_extreme_margins_are_finite():
    # h = +-1e4 with beta 0.1: beta h = +-1000; -log sigmoid(1000) ~ 0, -log sigmoid(-1000) = 1000
    pi_w = t([0.0, -1e4]).requires_grad_(True)
    pi_l = t([-1e4, 0.0])
    zero = torch.zeros(2)
    losses, _ = dpo_loss(pi_w, pi_l, zero, zero, beta=0.1)
    assert_close(losses, t([0.0, 1000.0]), **ATOL)
    losses.sum().backward()
    # d/dpi_w = -beta (1 - sigmoid(beta h)): 0 and -0.1
    assert_close(pi_w.grad, t([0.0, -0.1]), **ATOL)
    smoothed, _ = dpo_loss(pi_w.detach(), pi_l, zero, zero, beta=0.1, label_smoothing=0.5)
    assert_close(smoothed, t([500.0, 500.0]), **ATOL)  # 0.5 * (0 + 1000)


def test_ipo_by_hand():
    # tau = 0.1: target 1/(2 tau) = 5; h = 3, 5, 7 -> (3-5)^2 = 4, 0, (7-5)^2 = 4
    pi_w = t([3.0, 5.0, 7.0])
    zero = torch.zeros(3)
    losses, stats = ipo_loss(pi_w, zero, zero, zero, tau=0.1)
    assert_close(losses, t([4.0, 0.0, 4.0]), **ATOL)
    assert_close(stats["chosen_reward"], t([0.3, 0.5, 0.7]), **ATOL)  # tau * (pi_w - ref_w)


def test_slic_hinge_at_and_above_margin():
    # beta 0.1, delta 1: h = 3 -> 1 - 0.3 = 0.7; h = 10 -> exactly at the margin: 0; h = 20 -> 0
    pi_w = t([3.0, 10.0, 20.0]).requires_grad_(True)
    zero = torch.zeros(3)
    losses, _ = slic_loss(pi_w, zero, zero, zero, beta=0.1, delta=1.0)
    assert_close(losses, t([0.7, 0.0, 0.0]), **ATOL)
    losses.sum().backward()
    assert_close(pi_w.grad, t([-0.1, 0.0, 0.0]), **ATOL)  # no push once past the margin
    # delta 2: h = 10 -> 2 - 1 = 1
    losses, _ = slic_loss(pi_w.detach(), zero, zero, zero, beta=0.1, delta=2.0)
    assert_close(losses, t([1.7, 1.0, 0.0]), **ATOL)


def test_kto_by_hand():
    pi = t([-10.0, -13.0]).requires_grad_(True)
    ref = t([-12.0, -10.0])  # r = [2, -3]
    desirable = torch.tensor([True, False])
    z0 = torch.tensor(1.0, requires_grad=True)
    losses, stats = kto_loss(pi, ref, desirable, z0, beta=0.1)
    # desirable:   1 - sigmoid(0.1 * (2 - 1)) = 1 - sigmoid(0.1) = 1 - 0.52498 = 0.47502
    # undesirable: 1 - sigmoid(0.1 * (1 + 3)) = 1 - sigmoid(0.4) = 1 - 0.59869 = 0.40131
    assert_close(losses, t([0.47502, 0.40131]), **ATOL)
    assert_close(stats["reward"], t([0.2, -0.3]), **ATOL)
    losses.sum().backward()
    assert z0.grad is None  # the reference point is detached
    # d/dpi of 1 - sigmoid(0.1 (r - z0)) = -0.1 s (1 - s), s = 0.52498: -0.024938;
    # undesirable: +0.1 s (1 - s), s = 0.59869: +0.024026
    assert_close(pi.grad, t([-0.024938, 0.024026]), **ATOL)


def test_kto_reference_point_is_clamped_and_lambdas_scale():
    pi, ref = t([-10.0, -13.0]), t([-12.0, -10.0])
    desirable = torch.tensor([True, False])
    # z0 = -5 is clamped to 0: desirable 1 - sigmoid(0.2) = 0.45017;
    # undesirable with lambda_u 2: 2 * (1 - sigmoid(0.3)) = 2 * 0.42556 = 0.85112
    losses, stats = kto_loss(pi, ref, desirable, -5.0, beta=0.1, lambda_d=1.0, lambda_u=2.0)
    assert_close(losses, t([0.45017, 0.85112]), **ATOL)
    assert stats["kl"].item() == 0.0


def test_kto_kl_estimate():
    pi = torch.tensor([-1.0, -2.0], requires_grad=True)
    # diffs [0.5, -1]: mean -0.25 -> clamped to 0
    assert kto_kl_estimate(pi, t([-1.5, -1.0])).item() == 0.0
    # diffs [1, 0.5]: mean 0.75
    z0 = kto_kl_estimate(pi, t([-2.0, -2.5]))
    assert_close(z0, torch.tensor(0.75))
    assert not z0.requires_grad


def test_orpo_by_hand():
    # log odds(log 0.5) = log(0.5/0.5) = 0; log odds(log 0.2) = log(0.2/0.8) = -1.38629
    # ratio 1.38629; -log sigmoid(1.38629) = log(1 + 0.25) = 0.22314; times lam 0.1 = 0.022314
    losses, stats = orpo_loss(t([math.log(0.5)]), t([math.log(0.2)]), lam=0.1)
    assert_close(losses, t([0.022314]), **ATOL)
    assert_close(stats["log_odds_ratio"], t([1.38629]), **ATOL)


def test_orpo_near_zero_logprob_is_finite_and_accurate():
    # l = -1e-7: 1 - e^l = 1e-7 - 5e-15, log = -16.11810, log odds = -1e-7 + 16.11810 = 16.11810
    # (float32 log1p(-exp(l)) rounds e^l to 1 - 1.19e-7 and gives 15.94: wrong by 0.18)
    assert_close(log_odds(t([-1e-7])), t([16.11810]), atol=1e-4, rtol=0)
    # very negative l: log odds ~ l (p tiny): l = -50 -> -50 - log(1 - e^-50) = -50
    assert_close(log_odds(t([-50.0])), t([-50.0]), **ATOL)
    mean_w = t([-1e-7, 0.0]).requires_grad_(True)  # 0.0: a perfectly confident sequence
    losses, stats = orpo_loss(mean_w, t([math.log(0.5), math.log(0.5)]), lam=0.1)
    assert torch.isfinite(losses).all() and torch.isfinite(stats["log_odds_ratio"]).all()
    # -0.1 * log sigmoid(16.1181) = 0.1 * log(1 + e^-16.1181) = 0.1 * 1.0e-7 = 1.0e-8
    assert_close(losses[0], torch.tensor(1.0e-8), atol=1e-9, rtol=0)
    losses.sum().backward()
    assert torch.isfinite(mean_w.grad).all()
