"""Stage `ppo`: PPO and PPO-ptx against a reward model (InstructGPT §3.5, App. C.4).

Bandit episodes: a prompt, a sampled response, one reward. The reward per token is the KL penalty
-beta * (log pi - log ref), plus the (normalised) RM score at the response's last real token. A
separate value model, initialised from the RM, gives GAE advantages. PPO-ptx adds gamma times the
pretraining log-likelihood to each optimisation step. One explicit loop:
rollout -> score -> KL-shaped reward -> GAE -> PPO epochs -> log -> evaluate -> checkpoint."""
from __future__ import annotations

import copy
import math
import time
import warnings

import torch

from instructkit import data as datalib
from instructkit import distributed as D
from instructkit import losses as L
from instructkit.config import PPOConfig
from instructkit.data.encode import encode_text, length_buckets, pack_texts, render_prompt
from instructkit.errors import InputError
from instructkit.generation import SamplingParams, generate, left_pad, position_ids_from_mask
from instructkit.models import count_parameters, load_causal_lm, save_model, set_dropout, set_threads
from instructkit.run import RunDir, epoch_permutation, progress, rng_state, seed_everything, set_rng_state


# ---------------------------------------------------------------------------- model passes

def response_logits(model, sequences, attention_mask, prompt_len: int):
    """Logits that predict each response token: (B, N, V) for sequences (B, P + N)."""
    out = model(input_ids=sequences, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return out.logits[:, prompt_len - 1:-1]


def response_logprobs(model, sequences, attention_mask, prompt_len: int, temperature: float):
    """(logprobs (B, N), entropy (B, N)) of the response tokens at the sampling temperature."""
    logits = response_logits(model, sequences, attention_mask, prompt_len)
    labels = sequences[:, prompt_len:]
    return L.token_logprobs(logits, labels, temperature), L.entropy_from_logits(logits, temperature)


def response_values(value_model, sequences, attention_mask, prompt_len: int, gain: float, bias: float):
    """Per-token values (B, N) from the value model's backbone and scalar head, on the RM's scale."""
    backbone = value_model.base_model
    hidden = backbone(input_ids=sequences, attention_mask=attention_mask,
                      position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state
    values = value_model.score(hidden).squeeze(-1)  # (B, P + N)
    return gain * values[:, prompt_len - 1:-1] + bias


def bucketed(fn, sequences, attention_mask, prompt_len: int, bucket_rows: int):
    """fn(sequences, attention_mask, prompt_len) -> tensors (b, n) over the response positions, run on
    groups of `bucket_rows` rows of similar length, each cut to its own longest prompt (left padding)
    and response (right padding): the columns removed are padding every row of the group ignores, so
    the values are the same, and each group computes far less padding. Positions past a row's
    response are 0 (the response mask removes them)."""
    B, N = sequences.shape[0], sequences.shape[1] - prompt_len
    if not bucket_rows or bucket_rows >= B:
        return fn(sequences, attention_mask, prompt_len)
    plen = attention_mask[:, :prompt_len].sum(1)
    rlen = attention_mask[:, prompt_len:].sum(1)
    groups = length_buckets((plen + rlen).tolist(), bucket_rows)
    parts = []
    for g in groups:
        rows = torch.tensor(g)
        p, n = max(1, int(plen[rows].max())), max(1, int(rlen[rows].max()))
        cols = slice(prompt_len - p, prompt_len + n)
        out = fn(sequences[rows, cols], attention_mask[rows, cols], p)
        parts.append([torch.nn.functional.pad(t, (0, N - n)) for t in (out if isinstance(out, tuple) else (out,))])
    order = [i for g in groups for i in g]
    inverse = torch.empty(B, dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(B)
    res = tuple(torch.cat(ts)[inverse] for ts in zip(*parts))
    return res if len(res) > 1 else res[0]


def apply_eos_penalty(scores, ended_with_eos, penalty: float):
    """A response that never emits EOS gets the fixed `penalty` instead of its RM score (Ziegler et
    al.; the N implementation details): the RM never saw unfinished answers, so its score means little."""
    if not penalty:
        return scores
    return torch.where(ended_with_eos, scores, torch.full_like(scores, penalty))


# ---------------------------------------------------------------------------- the stage

def _check(cfg: PPOConfig) -> None:
    for name in ("policy", "reward_model", "prompts"):
        if not getattr(cfg, name):
            raise InputError("missing required field", field=name)
    if cfg.ptx_coef > 0 and not cfg.ptx_data:
        raise InputError("PPO-ptx (ptx_coef > 0) needs pretraining text", field="ptx_data")
    if cfg.rollout_batch % cfg.minibatch:
        raise InputError(f"rollout_batch ({cfg.rollout_batch}) must be a multiple of minibatch ({cfg.minibatch})",
                         field="minibatch")
    if cfg.samples_per_prompt < 1 or cfg.rollout_batch % cfg.samples_per_prompt:
        raise InputError(f"rollout_batch ({cfg.rollout_batch}) must be a multiple of samples_per_prompt "
                         f"({cfg.samples_per_prompt})", field="samples_per_prompt")
    if cfg.advantage == "rloo" and cfg.samples_per_prompt < 2:
        raise InputError("advantage=rloo needs samples_per_prompt >= 2 (the other samples are the baseline)",
                         field="samples_per_prompt")
    if cfg.advantage == "rloo" and cfg.value_warmup_iterations:
        raise InputError("value_warmup_iterations has no value model to warm up under advantage=rloo",
                         field="value_warmup_iterations")
    if cfg.temperature <= 0:
        raise InputError("PPO samples: temperature must be > 0", field="temperature")
    if cfg.eval_samples < 1:
        raise InputError(f"expected eval_samples >= 1, got {cfg.eval_samples}", field="eval_samples")
    if cfg.minibatch < D.world_size():
        raise InputError(f"minibatch ({cfg.minibatch}) must be at least the number of processes ({D.world_size()})",
                         field="minibatch")
    if cfg.dist.micro_batch_size:
        raise InputError("PPO's unit of work is the minibatch: lower `minibatch` instead", field="dist.micro_batch_size")
    if D.is_distributed() and cfg.dist.strategy == "fsdp" and cfg.ema > 0:
        raise InputError("the weight EMA is not kept under dist.strategy=fsdp yet", field="ema")


def run(cfg: PPOConfig) -> dict:
    from instructkit.scoring import is_scorer_spec, reward_function
    from instructkit.scoring import get_scorer

    threads = set_threads(cfg.threads)
    D.setup(cfg.dist.timeout_minutes)  # under torchrun: join the other processes (else nothing)
    _check(cfg)
    critic = cfg.advantage == "gae"  # rloo: no value model at all
    if is_scorer_spec(cfg.reward_model):
        if critic and not cfg.value_model:
            raise InputError("a scorer reward (e.g. spec:FILE) has no value head: set value_model to a reward-model "
                             "directory that shares the policy's tokenizer", field="value_model")
    else:
        check_gate(cfg.reward_model, cfg.require_gate)
    prompts = [p.prompt for p in datalib.load(cfg.prompts, "prompt")]
    eval_prompts = [p.prompt for p in datalib.load(cfg.eval_prompts, "prompt")][: cfg.eval_n] if cfg.eval_prompts else []
    ptx_docs = [t.text for t in datalib.load(cfg.ptx_data, "text")] if cfg.ptx_coef > 0 else []

    policy, tok = load_causal_lm(cfg.policy)
    reference, ref_tok = load_causal_lm(cfg.reference or cfg.policy)
    reward_fn = reward_function(cfg.reward_model)  # an RM directory, or a scorer spec such as spec:FILE
    value_model, value_norm = _value_model(cfg.value_model or cfg.reward_model, tok, cfg.policy) if critic else (None, None)
    if ref_tok.get_vocab() != tok.get_vocab():
        raise InputError("the reference's tokenizer differs from the policy's", path=cfg.reference)
    gold = get_scorer(cfg.gold) if cfg.gold else None
    judge = get_scorer(cfg.eval_scorer) if cfg.eval_scorer else reward_fn
    for m in (policy, reference, value_model):
        if m is not None:
            set_dropout(m, 0.0)  # InstructGPT detail: no dropout in PPO (log-probs must match the sampler's)
    reference.eval().requires_grad_(False)

    rendered = [render_prompt(p, tok, cfg.template) for p in prompts]
    prompt_ids = [encode_text(tok, p) for p in rendered]
    eval_rendered = [render_prompt(p, tok, cfg.template) for p in eval_prompts]
    ptx_blocks = pack_texts([encode_text(tok, d) for d in ptx_docs], tok.eos_token_id, cfg.ptx_seq_len) if ptx_docs else None

    rundir = D.main_only(RunDir(cfg.out, "ppo", cfg, {"policy": cfg.policy, "reward_model": _reward_path(cfg.reward_model),
                                                      "prompts": cfg.prompts, "ptx_data": cfg.ptx_data}))
    state = rundir.start()
    seed_everything(cfg.seed)
    iterations = max(1, cfg.episodes // cfg.rollout_batch)
    group = cfg.samples_per_prompt
    n_prompts = cfg.rollout_batch // group  # distinct prompts per rollout
    per_epoch = max(1, len(prompts) // n_prompts)
    ptx_per_step = int(round(cfg.ptx_per_episode * cfg.minibatch)) if ptx_blocks is not None else 0
    print(f"ppo: policy {count_parameters(policy) / 1e6:.2f}M, "
          + (f"value {count_parameters(value_model) / 1e6:.2f}M (GAE); " if critic else "no value model (RLOO); ")
          + f"{iterations} iterations x {cfg.rollout_batch} episodes ({n_prompts} prompts x {group}), "
          f"{cfg.ppo_epochs} epoch(s) of minibatch "
          f"{cfg.minibatch}; beta {cfg.kl.coef}{' (adaptive)' if cfg.kl.adaptive else ''}; "
          f"ptx {cfg.ptx_coef} x {ptx_per_step} seqs/step; {threads} thread(s), seed {cfg.seed}"
          + D.processes_note(cfg.dist.strategy, "; "))

    # DDP / FSDP2 under torchrun (the reference and the reward model are frozen: a copy per process)
    policy_w = D.wrap(policy, cfg.dist)
    value_w = D.wrap(value_model, cfg.dist) if critic else None

    opt_pi = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=cfg.adam_eps, fused=True)
    opt_v = torch.optim.Adam(value_model.parameters(), lr=cfg.value_lr, eps=cfg.adam_eps, fused=True) if critic else None
    warm = lambda it: min(1.0, (it + 1) / max(1, cfg.warmup_iterations))  # noqa: E731 (constant after warm-up)
    sch_pi = torch.optim.lr_scheduler.LambdaLR(opt_pi, warm)
    sch_v = torch.optim.lr_scheduler.LambdaLR(opt_v, warm) if critic else None
    kl_coef = cfg.kl.coef
    start, best, best_state, ema_state = 0, None, None, None
    if cfg.ema > 0:
        ema_state = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    if state:
        D.load_state_dict(policy_w, state["policy"])
        D.load_optimizer_state_dict(policy_w, opt_pi, state["opt_pi"])
        sch_pi.load_state_dict(state["sch_pi"])
        if critic:
            D.load_state_dict(value_w, state["value"])
            D.load_optimizer_state_dict(value_w, opt_v, state["opt_v"])
            sch_v.load_state_dict(state["sch_v"])
        set_rng_state(state["rng"])
        start, kl_coef, best, best_state, ema_state = (state["iteration"], state["kl_coef"], state["best"],
                                                       state["best_state"], state["ema_state"])
        print(f"ppo: resuming from iteration {start}")

    sample_gen = torch.Generator()
    bar = progress(iterations, start, "ppo")
    last = {}
    history = D.broadcast_object(_history(rundir) if D.is_main() else None)
    for it in range(start, iterations):
        t_it = time.time()
        sample_gen.manual_seed(cfg.seed * 7919 + it)
        # rollout
        epoch, i = divmod(it, per_epoch)
        order = epoch_permutation(cfg.seed, epoch, len(prompts))
        idx = [order[(i * n_prompts + j) % len(prompts)] for j in range(n_prompts) for _ in range(group)]
        input_ids, attn = left_pad([prompt_ids[j] for j in idx], tok.pad_token_id)
        P = input_ids.shape[1]
        lo, hi = D.shard_bounds(cfg.rollout_batch)  # this process's episodes (all of them without torchrun)
        input_ids, attn, idx = input_ids[lo:hi], attn[lo:hi], idx[lo:hi]
        policy.eval()
        with D.gathered(policy_w), D.sample_rows(sample_gen, lo, hi, cfg.rollout_batch, cfg.max_new_tokens):
            gen = generate(policy, input_ids, attn, SamplingParams(max_new_tokens=cfg.max_new_tokens,
                                                                   temperature=cfg.temperature),
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, generator=sample_gen,
                           return_logprobs=True)
        seq = gen.sequences  # (B, P + N)
        mask = gen.response_mask.float()  # (B, N): up to and including the first EOS
        full_attn = torch.cat([attn, gen.response_mask.long()], dim=1)
        t_roll = time.time() - t_it

        # score
        t0 = time.time()
        responses = tok.batch_decode(torch.where(gen.response_mask.bool() & (gen.response_ids != tok.eos_token_id),
                                                 gen.response_ids, tok.pad_token_id), skip_special_tokens=True)
        batch_prompts = [prompts[j] for j in idx]
        # the rollout batch's scores from every process: reward statistics are global
        scores = D.gather(torch.tensor(reward_fn(batch_prompts, responses), dtype=torch.float32))  # (B,)
        ended_with_eos = D.gather(gen.ended_with_eos)  # (B,)
        rm_mean = scores.mean().item()
        scores = apply_eos_penalty(scores, ended_with_eos, cfg.missing_eos_penalty)
        if cfg.scale_rewards:
            scores = scores / (scores.std() + 1e-8)
        gold_mean = D.all_reduce_sum(sum(gold(batch_prompts, responses))) / cfg.rollout_batch if gold else None
        with torch.no_grad(), D.gathered(policy_w), D.gathered(value_w):
            old_logprobs, _ = bucketed(lambda *a: response_logprobs(policy, *a, cfg.temperature), seq, full_attn, P,
                                       cfg.bucket_rows)
            ref_logprobs, _ = bucketed(lambda *a: response_logprobs(reference, *a, cfg.temperature), seq, full_attn, P,
                                       cfg.bucket_rows)
            old_values = (bucketed(lambda *a: response_values(value_model, *a, *value_norm), seq, full_attn, P,
                                   cfg.bucket_rows) if critic else torch.zeros_like(old_logprobs))
        # from here on every process holds the whole rollout batch, in its order: whitening, the KL
        # controller and the minibatches see global statistics, exactly as one process would
        seq, full_attn, mask, old_logprobs, ref_logprobs, old_values = (
            D.gather(t) for t in (seq, full_attn, mask, old_logprobs, ref_logprobs, old_values))
        old_logprobs, ref_logprobs, old_values = old_logprobs * mask, ref_logprobs * mask, old_values * mask
        t_score = time.time() - t0

        # KL-shaped reward
        rewards, kl = L.shaped_rewards(scores, old_logprobs, ref_logprobs, mask, kl_coef)
        kl_est = L.kl_estimators(old_logprobs, ref_logprobs)
        kl_seq = (kl * mask).sum(1)  # (B,) nats per response
        k3_seq = (kl_est["k3"] * mask).sum(1)

        # advantages: GAE over the value model's estimates, or each prompt's other samples as the baseline
        if critic:
            advantages, returns = L.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        else:
            advantages, returns = L.rloo_advantages(rewards, mask, group), None
        if cfg.whiten_advantages:
            advantages = L.whiten(advantages, mask) * mask

        # PPO epochs
        t0 = time.time()
        policy.train()
        if critic:
            value_model.train()
        stats: dict[str, list[float]] = {}
        frozen = it < cfg.value_warmup_iterations  # value warm-up: the critic learns before the actor moves
        for ppo_epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(cfg.rollout_batch, generator=sample_gen)
            for mb_start in range(0, cfg.rollout_batch, cfg.minibatch):
                mb = perm[mb_start:mb_start + cfg.minibatch]
                # this process's share of the minibatch (all of it without torchrun); the losses are means
                # over response tokens, so each share counts by its tokens (ptx: by its sequences)
                mine = D.shard(mb)
                share = float(mask[mine].sum() / mask[mb].sum().clamp_min(1))
                mb_stats = {}
                if not frozen:  # (while frozen: no policy pass at all)
                    ptx = None
                    if ptx_per_step:
                        rows = torch.randint(len(ptx_blocks), (ptx_per_step,), generator=sample_gen)
                        ptx_rows = D.shard(rows)
                        ptx_share = len(ptx_rows) / len(rows)
                        ptx = ptx_blocks[ptx_rows if len(ptx_rows) else rows[:1]]
                    logprobs, entropy, ptx_loss = policy_w(lambda m: (
                        *bucketed(lambda *a: response_logprobs(m, *a, cfg.temperature), seq[mine], full_attn[mine], P,
                                  cfg.bucket_rows),
                        m(input_ids=ptx, labels=ptx, use_cache=False).loss if ptx is not None else None))
                    pg_loss, pg_stats = L.ppo_policy_loss(logprobs, old_logprobs[mine], advantages[mine], mask[mine],
                                                          cfg.clip_range)
                    loss = pg_loss * share
                    mb_stats = {"pg_loss": pg_loss, "entropy": L.masked_mean(entropy, mask[mine]), **pg_stats}
                    mb_stats = {k: float(v.detach()) * share for k, v in mb_stats.items()}
                    if ptx is not None:
                        # PPO-ptx: gamma * E_pretrain[log pi(x)] joins the same optimiser step
                        loss = loss + cfg.ptx_coef * ptx_loss * ptx_share
                        mb_stats["ptx_loss"] = ptx_loss.item() * ptx_share
                    opt_pi.zero_grad(set_to_none=True)
                    D.backward(loss, 1.0)
                    if cfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
                    opt_pi.step()

                if critic:
                    values = value_w(lambda m: bucketed(lambda *a: response_values(m, *a, *value_norm), seq[mine],
                                                        full_attn[mine], P, cfg.bucket_rows))
                    v_loss, v_stats = L.ppo_value_loss(values, old_values[mine], returns[mine], mask[mine], cfg.vf_clip)
                    opt_v.zero_grad(set_to_none=True)
                    D.backward(cfg.vf_coef * v_loss * share, 1.0)
                    if cfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_(value_model.parameters(), cfg.grad_clip)
                    opt_v.step()
                    mb_stats.update({k: float(v.detach()) * share for k, v in {"vf_loss": v_loss, **v_stats}.items()})
                for k, v in D.all_reduce_sum(mb_stats).items():  # token-weighted shares: the minibatch's means
                    stats.setdefault(k, []).append(v)
        if not frozen:  # the policy's LR warm-up starts when it first moves
            sch_pi.step()
        if critic:
            sch_v.step()
        if ema_state is not None:
            with torch.no_grad():
                for k, v in policy.state_dict().items():
                    if v.dtype.is_floating_point:
                        ema_state[k].mul_(cfg.ema).add_(v, alpha=1 - cfg.ema)
        t_train = time.time() - t0

        # KL controller (Ziegler et al.): uses this batch's mean KL per response
        mean_kl = kl_seq.mean().item()
        if cfg.kl.adaptive:
            kl_coef = L.kl_controller_update(kl_coef, mean_kl, cfg.kl.target, cfg.kl.horizon, cfg.rollout_batch)

        # log
        done = it + 1
        record = {
            "episodes": done * cfg.rollout_batch,
            "reward_rm": rm_mean, "reward_total": (rewards * mask).sum(1).mean().item(),
            "kl": mean_kl, "kl_se": (kl_seq.std() / math.sqrt(len(kl_seq))).item(), "kl_k3": k3_seq.mean().item(),
            "kl_coef": kl_coef,
            "response_length": mask.sum(1).mean().item(), "eos_rate": ended_with_eos.float().mean().item(),
            **({"explained_variance": float(L.explained_variance(old_values, returns, mask))} if critic else {}),
            **{k: sum(v) / len(v) for k, v in stats.items()},
            "time_rollout": t_roll, "time_score": t_score, "time_train": t_train,
        }
        if gold_mean is not None:
            record["reward_gold"] = gold_mean
        alarms = _alarms(record, cfg)
        if alarms:
            record["alarms"] = alarms
            warnings.warn(f"ppo iteration {done}: " + "; ".join(alarms))
            if cfg.stop_on_alarm and any(a.startswith("non-finite") for a in alarms):
                print("ppo: stopping on a non-finite value; the last good checkpoint is kept")
                rundir.log(done, **record)
                break

        # evaluate
        if eval_rendered and ((cfg.eval_every and done % cfg.eval_every == 0) or done == iterations):
            with D.gathered(policy_w):  # every process evaluates the same thing: the same choice
                record["eval_score"] = _evaluate(policy, tok, eval_prompts, eval_rendered, judge, cfg)
            if best is None or record["eval_score"] > best["score"]:
                best = {"score": record["eval_score"], "iteration": done}
                best_state = copy.deepcopy((ema_state or D.state_dict(policy_w)))
        history.append(record)
        hacking = detect_hacking(history, cfg.hack_window, cfg.kl_slope_max)
        if hacking:
            record["alarms"] = record.get("alarms", []) + hacking
            warnings.warn(f"ppo iteration {done}: " + "; ".join(hacking))
        rundir.log(done, **record)
        last = record
        if hacking and cfg.stop_on_hacking:
            print("ppo: stopping on the reward-hacking detector; the best held-out checkpoint is kept")
            break
        bar.update(1)
        bar.set_postfix(rm=f"{rm_mean:.3f}", kl=f"{mean_kl:.2f}", **({"gold": f"{gold_mean:.3f}"} if gold_mean is not None else {}))
        if done == start + 1:
            print(f"\nppo: iteration time split: rollout {t_roll:.2f}s, scoring {t_score:.2f}s, training {t_train:.2f}s")
        if done % cfg.save_every == 0 and done < iterations:
            rundir.save_checkpoint({"step": done, "iteration": done, "policy": D.state_dict(policy_w),
                                    "value": D.state_dict(value_w) if critic else None,
                                    "opt_pi": D.optimizer_state_dict(policy_w, opt_pi),
                                    "opt_v": D.optimizer_state_dict(value_w, opt_v) if critic else None,
                                    "sch_pi": sch_pi.state_dict(), "sch_v": sch_v.state_dict() if critic else None,
                                    "rng": rng_state(),
                                    "kl_coef": kl_coef, "best": best, "best_state": best_state,
                                    "ema_state": ema_state})
    bar.close()

    if cfg.select == "best" and best_state is not None:
        D.load_state_dict(policy_w, best_state)
        selected = best["iteration"]
    else:
        if ema_state is not None:
            D.load_state_dict(policy_w, ema_state)
        selected = iterations
    # fsdp: the whole models gathered on every process; otherwise the models themselves
    policy = D.full_model(policy_w)
    value_model = D.full_model(value_w) if critic else None
    if D.is_main():
        save_model(policy, tok, cfg.out)
        if critic:
            value_model.save_pretrained(str(rundir.out / "value_model"), safe_serialization=True)
    metrics = {k: last.get(k) for k in ("reward_rm", "reward_gold", "kl", "kl_coef", "eos_rate", "response_length")
               if last.get(k) is not None}
    metrics["selected_iteration"] = selected
    if best is not None:
        metrics["eval_score"] = best["score"]
    rundir.finish(metrics)
    print(f"ppo: done -> {cfg.out} (iteration {selected} of {iterations}) " +
          " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    return metrics


def _reward_path(reward: str) -> str:
    """What to hash for the reward: the RM directory, a spec's file, or nothing for other scorers."""
    kind, _, rest = reward.partition(":")
    if kind == "spec":
        return rest
    return "" if kind in ("ai", "sandbox") else (rest if kind == "rm" else reward)


def _value_model(path: str, policy_tok, policy_path: str):
    """The value model: the reward model's architecture and weights, a scalar head read at every
    token, on the RM's normalised scale (InstructGPT initialises it from the RM). It reads the
    policy's token ids, so it must share the policy's tokenizer."""
    from instructkit.reward import check_same_tokenizer, load_reward_model

    model, tok, meta = load_reward_model(path)
    check_same_tokenizer(tok, policy_tok, policy_path, field="value_model")
    norm = meta.get("normalization") or {}
    return model, (float(norm.get("gain", 1.0)), float(norm.get("bias", 0.0)))


def _history(rundir) -> list[dict]:
    """The metrics logged so far (a resumed run continues the detector's window)."""
    import json
    if not rundir.metrics_path.exists():
        return []
    return [json.loads(l) for l in rundir.metrics_path.read_text().splitlines() if l.strip()]


def _slope(ys: list[float]) -> float:
    """Least-squares slope of ys against 0, 1, 2, ..."""
    n = len(ys)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, sum(ys) / n
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sum((i - mx) ** 2 for i in range(n))


def detect_hacking(history: list[dict], window: int = 3, kl_slope_max: float = 0.0) -> list[str]:
    """Reward-hacking signs in a PPO log (one dict per iteration): over the last `window` held-out
    evaluations the training RM reward rises while the held-out judge falls; or KL per response
    grows faster than `kl_slope_max` per iteration over the last `window` iterations."""
    out = []
    evals = [r for r in history if "eval_score" in r]
    if window >= 2 and len(evals) >= window:
        last = evals[-window:]
        rm, judge = _slope([r["reward_rm"] for r in last]), _slope([r["eval_score"] for r in last])
        if rm > 0 and judge < 0:
            out.append(f"reward hacking: RM reward rising ({rm:+.4f}/eval) while the held-out judge falls "
                       f"({judge:+.4f}/eval) over the last {window} evaluations")
    if kl_slope_max > 0 and len(history) >= max(2, window):
        slope = _slope([r["kl"] for r in history[-max(2, window):]])
        if slope > kl_slope_max:
            out.append(f"reward hacking: KL per response growing {slope:.3f} nats/iteration (limit {kl_slope_max})")
    return out


def check_gate(rm_dir: str, required: bool) -> None:
    """InstructGPT's RM has to be ahead of the policy: refuse PPO when the RM's best-of-n pick is no
    better than a random sample by the held-out judge (the gate `instructkit rm` stores)."""
    import json
    from pathlib import Path

    meta_file = Path(rm_dir) / "instructkit.json"
    gates = json.loads(meta_file.read_text()).get("gates", {}) if meta_file.exists() else {}
    gain = gates.get("bon_gain")
    if gain is None:
        print(f"ppo: the reward model has no best-of-n gate figure ({meta_file}); not checked")
        return
    if gain <= 0 and required:
        raise InputError(f"RM quality gate: its best-of-{gates.get('bon_n', 'n')} pick scores {gain:+.4f} against a "
                         "random sample by the held-out judge (must be > 0): PPO would optimise noise. Collect more or "
                         "fresher comparisons, or pass require_gate=false", path=str(meta_file), field="gates.bon_gain")
    print(f"ppo: RM gate ok: best-of-{gates.get('bon_n', 'n')} gain {gain:+.4f}")


def _alarms(record: dict, cfg: PPOConfig) -> list[str]:
    out = []
    bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        out.append(f"non-finite {', '.join(bad)}")
    if record["kl"] + 2 * record["kl_se"] < 0:  # below zero by more than sampling noise
        out.append(f"negative mean KL {record['kl']:.4f} ± {record['kl_se']:.4f} (sampling and training log-probs disagree?)")
    if record["response_length"] >= 0.95 * cfg.max_new_tokens and record["eos_rate"] < 0.5:
        out.append(f"runaway length: mean {record['response_length']:.1f} of {cfg.max_new_tokens}, "
                   f"{record['eos_rate']:.0%} end with EOS")
    return out


@torch.no_grad()
def _evaluate(policy, tok, prompts, rendered, judge, cfg: PPOConfig) -> float:
    from instructkit.generation import generate_texts

    policy.eval()
    k = cfg.eval_samples  # each prompt k times: the mean over k samples, at 1/sqrt(k) the noise
    responses = generate_texts(policy, tok, [r for r in rendered for _ in range(k)],
                               SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature),
                               seed=cfg.seed + 12345)
    scores = judge([p for p in prompts for _ in range(k)], responses)
    return sum(scores) / max(1, len(scores))
