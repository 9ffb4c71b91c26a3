"""Command `bon`: best-of-n sampling with a reward model (Nakano et al.; text-davinci-002's FeedME).

Sample n responses per prompt, keep the RM's best. The chosen samples are SFT data in the
demonstration format. The policy it implies is at most log n - (n-1)/n nats from the sampler
(Stiennon et al. / Hilton's bound), which the command prints."""
from __future__ import annotations

import math
import time

import torch

from instructkit import data as datalib
from instructkit.config import BoNConfig
from instructkit.data.encode import render_prompt
from instructkit.data.jsonl import write_json, write_jsonl
from instructkit.errors import InputError
from instructkit.models import load_causal_lm, set_threads


def kl_bound(n: int) -> float:
    """Upper bound on KL(best-of-n || sampler) in nats: log n - (n - 1) / n."""
    return math.log(n) - (n - 1) / n


def run(cfg: BoNConfig) -> dict:
    from instructkit.generation import SamplingParams, generate_texts
    from instructkit.scoring import reward_function
    from instructkit.scoring import get_scorer

    set_threads(cfg.threads)
    for name in ("model", "reward_model", "prompts", "out"):
        if not getattr(cfg, name):
            raise InputError("missing required field", field=name)
    if cfg.n < 1:
        raise InputError("n must be >= 1", field="n")
    if cfg.n_prompts < 0:
        raise InputError(f"expected n_prompts >= 0, got {cfg.n_prompts}", field="n_prompts")
    prompts = [p.prompt for p in datalib.load(cfg.prompts, "prompt")]
    if cfg.n_prompts:
        prompts = prompts[: cfg.n_prompts]
    model, tok = load_causal_lm(cfg.model)
    model.eval()
    reward_fn = reward_function(cfg.reward_model)  # an RM directory, or a scorer spec such as spec:FILE
    gold = get_scorer(cfg.gold) if cfg.gold else None
    rendered = [render_prompt(p, tok, cfg.template) for p in prompts]
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)

    t0 = time.time()
    samples = [generate_texts(model, tok, rendered, params, batch_size=cfg.batch_size, seed=cfg.seed + k)
               for k in range(cfg.n)]  # n lists of len(prompts)
    rm = torch.tensor([reward_fn(prompts, s) for s in samples])  # (n, prompts)
    best = rm.argmax(0)  # (prompts,)
    records = [{"prompt": p, "completion": samples[int(best[i])][i], "score": float(rm[best[i], i]), "n": cfg.n}
               for i, p in enumerate(prompts)]
    summary = {"n": cfg.n, "kl_bound": kl_bound(cfg.n), "prompts": len(prompts),
               "rm_best": rm.max(0).values.mean().item(), "rm_random": rm.mean().item()}
    if gold is not None:
        # gold utility of the RM's pick among the first m samples, m = 1, 2, 4, ..., n
        g = torch.tensor([gold(prompts, s) for s in samples])  # (n, prompts)
        curve = {}
        m = 1
        while m <= cfg.n:
            pick = rm[:m].argmax(0)
            curve[m] = {"gold": g[pick, torch.arange(len(prompts))].mean().item(), "kl_bound": kl_bound(m),
                        "rm": rm[:m].max(0).values.mean().item()}
            m *= 2
        summary["curve"] = curve
    write_jsonl(cfg.out, records)
    write_json(str(cfg.out) + ".summary.json", summary)
    print(f"bon: best of {cfg.n} for {len(prompts)} prompts in {time.time() - t0:.1f}s -> {cfg.out}")
    print(f"bon: KL bound log n - (n-1)/n = {summary['kl_bound']:.4f} nats; RM score best {summary['rm_best']:.3f} "
          f"vs random sample {summary['rm_random']:.3f}")
    for m, row in summary.get("curve", {}).items():
        print(f"bon:   n={m:<3d} gold {row['gold']:.4f}  rm {row['rm']:.3f}  KL bound {row['kl_bound']:.3f}")
    return summary
