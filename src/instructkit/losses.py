"""The math of every stage: pure tensor functions, no trainer state, no I/O.

Shapes: B = batch (prompts or sequences), T = tokens, V = vocabulary, K = completions per prompt.
Masks are 0/1 or bool; a position with mask 0 never contributes to a loss or statistic.
Statistics are returned detached so they can be logged without keeping the graph alive.

Sources: Ouyang et al. 2022 (InstructGPT), Ziegler et al. 2019 (KL-shaped reward, adaptive KL),
Schulman et al. 2015/2017 (GAE, PPO), Rafailov et al. 2023 (DPO), Azar et al. 2023 (IPO),
Zhao et al. 2023 (SLiC-HF), Ethayarajh et al. 2024 (KTO), Hong et al. 2024 (ORPO).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = [
    "masked_mean",
    "masked_var",
    "whiten",
    "token_logprobs",
    "entropy_from_logits",
    "lm_loss",
    "ranking_pair_mask",
    "ranking_pairs",
    "ranking_loss",
    "pairwise_accuracy",
    "kl_estimators",
    "shaped_rewards",
    "gae",
    "kl_controller_update",
    "ppo_policy_loss",
    "ppo_value_loss",
    "explained_variance",
    "dpo_loss",
    "ipo_loss",
    "slic_loss",
    "kto_loss",
    "kto_kl_estimate",
    "log_odds",
    "orpo_loss",
]


# ----------------------------------------------------------------------------- masked statistics


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over positions where `mask` is 1 (0 where nothing is selected)."""
    keep = mask.bool()
    x = torch.where(keep, x, torch.zeros_like(x))  # padding may hold nan/inf
    if dim is None:
        return x.sum() / keep.sum().clamp_min(1)
    return x.sum(dim) / keep.sum(dim).clamp_min(1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of `x` over all positions where `mask` is 1 (one scalar).

    With `unbiased`, Bessel's correction n/(n-1); a single selected element has variance 0.
    """
    centred = x - masked_mean(x, mask)
    var = masked_mean(centred**2, mask)
    if unbiased:
        n = mask.bool().sum().to(var.dtype)
        var = var * n / (n - 1).clamp_min(1)
    return var


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise `x` to unit (unbiased) variance over the masked entries; 0 where mask is 0.

    shift_mean=True: mean 0 (advantages). shift_mean=False: the mean is kept and only the spread
    is scaled, (x - mu) / sigma + mu (rewards "scaled, not re-centred", InstructGPT App. C).
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask, unbiased=True)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, torch.zeros_like(out))


# ----------------------------------------------------------------------------- language modelling


def token_logprobs(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature)[label] per position: (B, T, V), (B, T) -> (B, T).

    `logits[:, t]` must already predict `labels[:, t]`. Computed as gathered logit minus
    logsumexp, so no (B, T, V) log-prob tensor is materialised. Negative labels (e.g. -100
    padding) are read as token 0; the caller masks those positions.
    """
    # InstructGPT App. C / Huang et al. 2403.17031: divide by the sampling temperature in every pass
    logits = logits.float() / temperature  # (B, T, V)
    picked = logits.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)  # (B, T)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of softmax(logits / temperature) per position: (B, T, V) -> (B, T)."""
    logits = logits.float() / temperature  # (B, T, V)
    # H = -sum p log p = logsumexp(z) - sum p z
    return torch.logsumexp(logits, dim=-1) - (F.softmax(logits, dim=-1) * logits).sum(-1)


def lm_loss(logits: Tensor, labels: Tensor, loss_mask: Tensor) -> Tensor:
    """Mean next-token cross entropy over positions with loss_mask 1 (already shifted).

    (B, T, V), (B, T), (B, T) -> scalar. SFT masks the prompt tokens (InstructGPT §3.5).
    """
    nll = -token_logprobs(logits, labels)  # (B, T)
    return masked_mean(nll, loss_mask)


# ----------------------------------------------------------------------------- reward model


def ranking_pair_mask(ranks: Tensor, valid: Tensor) -> Tensor:
    """(B, K, K) bool: [b, w, l] is True when completion w is ranked strictly above l.

    Rank 1 is best; equal ranks are ties and form no pair; invalid (padding) slots form none.
    """
    valid = valid.bool()
    both = valid.unsqueeze(2) & valid.unsqueeze(1)  # (B, K, K)
    return both & (ranks.unsqueeze(2) < ranks.unsqueeze(1))  # (B, K, K)


def ranking_pairs(ranks: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Index tensors (b, w, l), each (P,), of every strictly ordered pair of every prompt.

    Lets the direct losses consume K-way rankings: all ranked pairs of a prompt, as the RM does.
    Pairs come in row-major order of (b, w, l).
    """
    b, w, l = ranking_pair_mask(ranks, valid).nonzero(as_tuple=True)
    return b, w, l


def _pair_margins(scores: Tensor, pairs: Tensor) -> Tensor:
    """r_w - r_l for every (b, w, l), 0 where [b, w, l] is not a ranked pair: (B, K, K)."""
    diff = scores.unsqueeze(2) - scores.unsqueeze(1)  # (B, K, K)
    return torch.where(pairs, diff, torch.zeros_like(diff))  # padding scores may be nan/inf


def pairwise_accuracy(scores: Tensor, ranks: Tensor, valid: Tensor) -> Tensor:
    """Fraction of ranked pairs with r_w > r_l, equal scores counting 0.5 (pooled over pairs)."""
    pairs = ranking_pair_mask(ranks, valid)  # (B, K, K)
    margin = _pair_margins(scores.detach(), pairs)  # (B, K, K)
    correct = (margin > 0).to(scores.dtype) + 0.5 * (margin == 0).to(scores.dtype)
    return masked_mean(correct, pairs)


def ranking_loss(scores: Tensor, ranks: Tensor, valid: Tensor) -> tuple[Tensor, dict]:
    """K-way reward-model loss: all ranked pairs of one prompt form one batch element.

    scores (B, K) float, ranks (B, K) int (1 = best, equal = tie), valid (B, K) bool (mixed K).
    Per prompt: -1/P * sum_{w better than l} log sigmoid(r_w - r_l), P = its number of non-tied
    pairs (C(K, 2) without ties); then the mean over prompts with at least one pair.
    Stats: accuracy (pooled over pairs, score ties 0.5), n_pairs (int), margin (mean r_w - r_l).
    """
    pairs = ranking_pair_mask(ranks, valid)  # (B, K, K)
    margin = _pair_margins(scores, pairs)  # (B, K, K)
    # InstructGPT eq. 1: loss = -1/C(K,2) E[log sigmoid(r(x, y_w) - r(x, y_l))]
    pair_loss = -F.logsigmoid(margin) * pairs  # (B, K, K)
    n_per_prompt = pairs.sum(dim=(1, 2))  # (B,)
    has_pairs = n_per_prompt > 0  # (B,)
    per_prompt = pair_loss.sum(dim=(1, 2)) / n_per_prompt.clamp_min(1)  # (B,)
    loss = masked_mean(per_prompt, has_pairs)  # 0 (with a graph) if no prompt has a pair
    stats = {
        "accuracy": pairwise_accuracy(scores, ranks, valid),
        "n_pairs": int(n_per_prompt.sum()),
        "margin": masked_mean(margin.detach(), pairs),
    }
    return loss, stats


# ----------------------------------------------------------------------------- PPO


def kl_estimators(logprobs: Tensor, ref_logprobs: Tensor) -> dict[str, Tensor]:
    """Per-token estimators of KL(pi || ref) from samples of pi (Schulman, "Approximating KL").

    k1 = log pi - log ref (unbiased, high variance, can be negative);
    k2 = 0.5 (log pi - log ref)^2 (biased, low variance);
    k3 = (ref/pi) - 1 - log(ref/pi) (unbiased, always >= 0).
    """
    log_ratio = ref_logprobs - logprobs  # log(ref / pi), (B, T)
    return {
        "k1": -log_ratio,
        "k2": 0.5 * log_ratio**2,
        "k3": torch.expm1(log_ratio) - log_ratio,  # expm1 keeps precision near ratio 1
    }


def shaped_rewards(
    scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, kl_coef: float | Tensor
) -> tuple[Tensor, Tensor]:
    """KL-shaped per-token reward and the per-token KL, both (B, T); 0 where mask is 0.

    scores (B,) is the RM score, added at the last position of each row where mask is 1 (the
    EOS, or the last token of a truncated response). A row with no real token gets nothing.
    """
    real = mask.bool()
    kl = torch.where(real, logprobs - ref_logprobs, torch.zeros_like(logprobs))  # k1, (B, T)
    # InstructGPT eq. 2 / Ziegler et al.: R(x, y) = r(x, y) - beta log(pi(y|x) / ref(y|x))
    rewards = -kl_coef * kl  # (B, T)
    T = mask.shape[1]
    positions = torch.arange(T, device=mask.device).expand_as(mask)  # (B, T)
    last = torch.where(real, positions, -1).max(dim=1).values  # (B,), -1 if empty
    has_tokens = last >= 0  # (B,)
    bonus = torch.where(has_tokens, scores.to(rewards.dtype), torch.zeros_like(rewards[:, 0]))
    rewards = rewards.scatter_add(1, last.clamp_min(0).unsqueeze(1), bonus.unsqueeze(1))
    return rewards, kl


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over one response per row: (advantages, returns), (B, T).

    The value after the last real token is 0 (bandit episode ends there); positions with mask 0
    are skipped (they neither discount nor bootstrap) and get 0. Inputs are treated as constants.
    """
    rewards, values, real = rewards.detach(), values.detach(), mask.bool()
    advantages = torch.zeros_like(values)  # (B, T)
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    last_gae = torch.zeros_like(values[:, 0])  # (B,)
    for t in reversed(range(values.shape[1])):
        # Schulman et al. 2015 eq. 16: delta_t = r_t + gamma V_{t+1} - V_t,
        # A_t = delta_t + gamma lam A_{t+1}
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a_t = delta + gamma * lam * last_gae
        last_gae = torch.where(real[:, t], a_t, last_gae)
        next_value = torch.where(real[:, t], values[:, t], next_value)
        advantages[:, t] = torch.where(real[:, t], a_t, torch.zeros_like(a_t))
    returns = torch.where(real, advantages + values, torch.zeros_like(values))
    return advantages, returns


def rloo_advantages(rewards: Tensor, mask: Tensor, group_size: int) -> Tensor:
    """Leave-one-out advantages (Kool et al. 2019; Ahmadian et al. 2024), (B, T).

    rewards (B, T) are the KL-shaped per-token rewards; rows come in consecutive groups of
    `group_size` samples of one prompt. Each row's return is its reward summed over the response;
    its baseline is the mean return of the other rows of its group; the difference is the
    advantage of every response token (0 where mask is 0). No value model is involved.
    """
    B = rewards.shape[0]
    if group_size < 2 or B % group_size:
        raise ValueError(f"rloo needs groups of >= 2 samples per prompt that tile the batch (B={B}, k={group_size})")
    returns = (rewards * mask).sum(1).view(-1, group_size)  # (B/k, k)
    baseline = (returns.sum(1, keepdim=True) - returns) / (group_size - 1)  # mean of the other k-1
    adv = (returns - baseline).reshape(B, 1)  # (B, 1)
    return torch.where(mask.bool(), adv.expand_as(mask), torch.zeros_like(rewards))


def kl_controller_update(
    beta: float, kl: float, target: float, horizon: float, n_steps: int
) -> float:
    """Adaptive KL coefficient (Ziegler et al. 2019 §2.2); n_steps = episodes since last update."""
    # Ziegler et al. 2019 §2.2: e = clip(KL/KL_target - 1, -0.2, 0.2); beta <- beta (1 + K_beta e)
    e = min(max(float(kl) / target - 1.0, -0.2), 0.2)
    return float(beta) * (1.0 + e * n_steps / horizon)


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_range: float = 0.2,
) -> tuple[Tensor, dict]:
    """Clipped surrogate policy loss, masked mean over response tokens.

    All (B, T). Stats (lm-human-preferences definitions): clipfrac = fraction of tokens where the
    clipped term is the active one (pg_loss2 > pg_loss1, so the gradient is zero);
    approx_kl = masked mean of 0.5 (log pi - log pi_old)^2 (the k2 estimator); ratio = its mean.
    """
    advantages, old_logprobs = advantages.detach(), old_logprobs.detach()
    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    # Schulman et al. 2017 eq. 7: L = -E[min(r A, clip(r, 1-eps, 1+eps) A)]
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.max(pg_loss1, pg_loss2), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((pg_loss2 > pg_loss1).to(ratio.dtype), mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def ppo_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float = 0.2
) -> tuple[Tensor, dict]:
    """Clipped value loss 0.5 * E[max((V - R)^2, (V_clip - R)^2)], all (B, T).

    vf_clipfrac = fraction of tokens where the clipped term is the larger (active) one.
    """
    old_values, returns = old_values.detach(), returns.detach()
    # lm-human-preferences / cleanrl: V_clip = V_old + clip(V - V_old, -eps, eps)
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    v_loss_unclipped = (values - returns) ** 2  # (B, T)
    v_loss_clipped = (v_clipped - returns) ** 2  # (B, T)
    loss = 0.5 * masked_mean(torch.max(v_loss_unclipped, v_loss_clipped), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((v_loss_clipped > v_loss_unclipped).float(), mask)}
    return loss, stats


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var[R - V] / Var[R] over masked tokens; 1 = perfect, 0 = no better than a constant.

    nan when the returns have zero variance (nothing to explain).
    """
    values, returns = values.detach(), returns.detach()
    var_returns = masked_var(returns, mask)
    if float(var_returns) == 0.0:
        return torch.tensor(float("nan"), dtype=var_returns.dtype, device=var_returns.device)
    return 1.0 - masked_var(returns - values, mask) / var_returns


# ----------------------------------------------------------------------------- direct preference
# pi_* / ref_* are per-sequence log-prob sums over response tokens, each (B,). Every loss returns
# per-example losses (B,) (the caller reduces) and detached per-example stats (B,).


def _preference_stats(
    beta: float, pi_w: Tensor, pi_l: Tensor, ref_w: Tensor, ref_l: Tensor
) -> dict[str, Tensor]:
    chosen = (beta * (pi_w - ref_w)).detach()  # (B,)
    rejected = (beta * (pi_l - ref_l)).detach()  # (B,)
    return {
        "chosen_reward": chosen,
        "rejected_reward": rejected,
        "margin": chosen - rejected,
        "accuracy": (chosen > rejected).to(chosen.dtype),
    }


def _h(pi_w: Tensor, pi_l: Tensor, ref_w: Tensor, ref_l: Tensor) -> Tensor:
    # h = [log pi(y_w) - log ref(y_w)] - [log pi(y_l) - log ref(y_l)]
    return (pi_w - ref_w) - (pi_l - ref_l)  # (B,)


def dpo_loss(
    pi_w: Tensor, pi_l: Tensor, ref_w: Tensor, ref_l: Tensor, beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, dict]:
    """DPO; with label_smoothing e > 0 the conservative DPO (cDPO) of Mitchell 2023."""
    logits = beta * _h(pi_w, pi_l, ref_w, ref_l)  # (B,)
    # Rafailov et al. eq. 7 (+ cDPO): -(1-e) log sigmoid(beta h) - e log sigmoid(-beta h)
    e = label_smoothing
    losses = -(1.0 - e) * F.logsigmoid(logits) - e * F.logsigmoid(-logits)
    return losses, _preference_stats(beta, pi_w, pi_l, ref_w, ref_l)


def ipo_loss(
    pi_w: Tensor, pi_l: Tensor, ref_w: Tensor, ref_l: Tensor, tau: float = 0.1
) -> tuple[Tensor, dict]:
    """IPO. The caller passes LENGTH-AVERAGED log-probs (sum / n_tokens), as Azar et al. and TRL
    do, so the target margin 1/(2 tau) does not depend on response length. Stats use beta = tau.
    """
    h = _h(pi_w, pi_l, ref_w, ref_l)  # (B,)
    # Azar et al. 2023, IPO sample loss: (h - 1/(2 tau))^2
    losses = (h - 1.0 / (2.0 * tau)) ** 2
    return losses, _preference_stats(tau, pi_w, pi_l, ref_w, ref_l)


def slic_loss(
    pi_w: Tensor, pi_l: Tensor, ref_w: Tensor, ref_l: Tensor, beta: float = 0.1, delta: float = 1.0
) -> tuple[Tensor, dict]:
    """SLiC-HF calibration hinge on the reference-relative margin (TRL "hinge" when delta = 1).

    The optional SFT regulariser on the reference completion is the caller's.
    """
    # SLiC-HF calibration loss (Zhao et al. 2023) on h, not raw log-probs: max(0, delta - beta h)
    losses = F.relu(delta - beta * _h(pi_w, pi_l, ref_w, ref_l))
    return losses, _preference_stats(beta, pi_w, pi_l, ref_w, ref_l)


def kto_kl_estimate(pi_mismatched: Tensor, ref_mismatched: Tensor) -> Tensor:
    """KTO reference point z0: mean log pi/ref on mismatched (x, y') pairs, >= 0, detached."""
    return (pi_mismatched - ref_mismatched).mean().clamp_min(0.0).detach()


def kto_loss(
    pi: Tensor, ref: Tensor, desirable: Tensor, kl_ref_point: Tensor | float, beta: float = 0.1,
    lambda_d: float = 1.0, lambda_u: float = 1.0,
) -> tuple[Tensor, dict]:
    """KTO on unpaired examples: pi, ref (B,) log-prob sums, desirable (B,) bool.

    The reference point z0 is detached and clamped >= 0 here whatever the caller passes.
    Stats: reward = beta (pi - ref) (B,), desirable (B,), kl = z0.
    """
    r = pi - ref  # (B,)
    z0 = torch.as_tensor(kl_ref_point, dtype=r.dtype, device=r.device).detach().clamp_min(0.0)
    desirable = desirable.bool()
    # KTO (Ethayarajh et al. 2024): loss = lambda_y - v, v = lambda_D sigma(beta (r - z0)) if
    # desirable else lambda_U sigma(beta (z0 - r))
    loss_d = lambda_d * (1.0 - torch.sigmoid(beta * (r - z0)))
    loss_u = lambda_u * (1.0 - torch.sigmoid(beta * (z0 - r)))
    losses = torch.where(desirable, loss_d, loss_u)
    stats = {"reward": (beta * r).detach(), "desirable": desirable, "kl": z0}
    return losses, stats


def log_odds(mean_logp: Tensor) -> Tensor:
    """log(p / (1 - p)) from l = log p <= 0, stable near l = 0 and for very negative l.

    log(1 - e^l) uses log(-expm1(l)) for l > -ln 2 and log1p(-e^l) below (Maechler's log1mexp).
    l is clamped just below 0 so that a perfectly confident sequence gives a finite value.
    """
    tiny = torch.finfo(mean_logp.dtype).tiny
    l = mean_logp.clamp(max=-tiny)
    near_zero = l > -0.6931471805599453
    # each branch sees a safe argument, so the unused one cannot put nan into the gradient
    log1m = torch.where(
        near_zero,
        torch.log(-torch.expm1(torch.where(near_zero, l, -1.0))),
        torch.log1p(-torch.exp(torch.where(near_zero, -1.0, l))),
    )
    return l - log1m


def orpo_loss(mean_logp_w: Tensor, mean_logp_l: Tensor, lam: float = 0.1) -> tuple[Tensor, dict]:
    """ORPO odds-ratio term, lam * -log sigmoid(log odds(y_w) - log odds(y_l)), per example.

    Inputs are MEAN per-token log-probs of the response (B,). The SFT NLL on y_w is the caller's.
    Stats: log_odds_ratio (B,), accuracy (ratio > 0).
    """
    ratio = log_odds(mean_logp_w) - log_odds(mean_logp_l)  # (B,)
    # ORPO (Hong et al. 2024): L_OR = -log sigmoid(log odds(y_w|x) / odds(y_l|x))
    losses = -lam * F.logsigmoid(ratio)
    stats = {"log_odds_ratio": ratio.detach(), "accuracy": (ratio > 0).to(ratio.dtype).detach()}
    return losses, stats
