"""The headline claim: a small aligned policy is preferred to a ~8x larger base model prompted
few-shot (InstructGPT: 1.3B InstructGPT preferred to 175B GPT-3; 175B InstructGPT preferred 85 ± 3%
to 175B GPT-3 and 71 ± 4% to 175B GPT-3 few-shot), judged by the sandbox's held-out labeler panel on
the world's eval prompts.

    instructkit pipeline configs/headline.yaml      # the policy: the demo's chain, pretrained like the base
    python benchmarks/headline.py [--policy runs/headline/ppo_ptx] [--out runs/headline/vs_base]

(`make bench` runs both.) `--policy runs/demo/ppo_ptx` compares `make demo`'s policy instead; its
pretraining is shorter, on the smaller `default` corpus.

Stages, each an ordinary instructkit run directory under --out (a rerun skips complete ones, the
eval only if it was made from the same policy, base and settings, and resumes a killed pretraining
from its last checkpoint):
  world   `instructkit world build --size headline`: the policy's world (same seed: the same
          knowledge base, demonstrations and prompts) with an 8M-token corpus; the policy's own
          world when it is that already (configs/headline.yaml)
  base    `instructkit pretrain`: the demo's family (Llama: RMSNorm, rotary positions, gated MLP),
          d_model 192, 9 layers, 6 heads, MLP 512, 1,024-token vocabulary (~4.2M parameters, ~7.7x
          the policy's 0.54M) on that corpus; the default budget is 1,500 steps of 16 x 128 tokens
          (3.1M tokens; ~30 minutes on one core, plus ~90 s to train the tokenizer and encode the
          13.5M-token corpus), the recipe configs/headline.yaml pretrains the policy with.
          `--family gpt2` builds the GPT-2 of the same width and depth.
  eval    `instructkit eval` with the policy as the baseline, the base few-shot (fewshot.NAME=K)
          and bare, held-out panel judge; also the policy's own pretrained model (--policy-base,
          default POLICY/../pretrain), few-shot and bare: the paper's 85 ± 3% and 71 ± 4% are
          175B InstructGPT against 175B GPT-3, a same-size comparison
  ceiling an oracle that answers every prompt right (sandbox/writers.py: oracle_response), judged
          by the same panel against the same samples: the most any policy could win there. Where the
          base answers right it is a tie or a coin toss, so the few-shot base caps every opponent
          well below 100% (about 76-80% at the headline size)
Prints the policy's win rate against each with 95% intervals, writes OUT/headline.json, and copies
it to the policy's pipeline run (--run, default the policy's parent directory, e.g. runs/headline) as
headline.json, re-rendering that run's report when it has one: the report's claims table reads it."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("INSTRUCTKIT_QUIET", "1")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def n_params(path: Path) -> int:
    from instructkit.models import load_causal_lm
    model, _ = load_causal_lm(str(path))
    return sum(p.numel() for p in model.parameters())  # tied embeddings counted once


def stale(ev: Path, args: list[str], models: dict[str, Path]) -> bool:
    """A complete eval in `ev` made with other settings, or from models whose files have changed
    since (another --policy, a retrained demo): it must be redone, not skipped."""
    meta = ev / "instructkit.json"
    if not meta.exists():
        return False
    from instructkit.config import EvalConfig, load_config, to_dict
    from instructkit.run import file_sha256
    done = json.loads(meta.read_text())
    want = to_dict(load_config(EvalConfig, overrides=args))
    made = {**to_dict(EvalConfig()), **done["config"]}  # a field added since the eval ran: it ran with the default
    keys = ("models", "fewshot", "fewshot_cut", "baseline", "prompts", "world", "judge", "n_prompts", "seed")
    return (any(made.get(k) != want[k] for k in keys)
            or any(done["inputs"].get(k, {}).get("sha256") != file_sha256(p) for k, p in models.items()))


def flip(w: dict) -> dict:
    """B's win rate over A from A's over B: ties count half either way; the Wilson interval mirrors."""
    return {"rate": 1 - w["rate"], "low": 1 - w["high"], "high": 1 - w["low"], "n": w["n"],
            "wins": w["n"] - w["wins"] - w["ties"], "ties": w["ties"]}


def figures(models: dict, same_size: bool) -> dict:
    """The policy's win rates from one eval (the policy is its baseline): vs the base few-shot
    (`win_rate`) and bare (`win_rate_bare`), and, when it was evaluated, vs its own base (`same_size`:
    the paper's comparison, aligned vs not at one size)."""
    fig = {"win_rate": flip(models["base_fewshot"]["win_rate"]), "win_rate_bare": flip(models["base"]["win_rate"])}
    if same_size:
        fig["same_size"] = {"win_rate": flip(models["own_fewshot"]["win_rate"]),
                            "win_rate_bare": flip(models["own"]["win_rate"])}
    return fig


def ceiling(world, ev: Path, seed: int, same_size: bool) -> dict:
    """The most any policy could win in this eval: an oracle that gives a right answer to every prompt
    (`oracle_response`: the plainest right phrasing) judged by the same panel with the same seed
    against the samples each model gave there (ev/samples.jsonl). A model that answers right, word
    for word, ties it. Keys as figures()'s, plus `vs_policy` (the oracle against the policy)."""
    from instructkit.evaluate.run import compare
    from instructkit.evaluate.stats import win_rate
    from instructkit.sandbox.writers import oracle_response

    rows = [json.loads(line) for line in (ev / "samples.jsonl").read_text().splitlines() if line.strip()]
    prompts = [r["prompt"] for r in rows]
    oracle = [oracle_response(world.parse(p), world.kb, p) for p in prompts]

    def vs(name: str) -> dict:
        return win_rate(compare("panel", world, prompts, oracle, [r[name] for r in rows], seed))

    out = {"win_rate": vs("base_fewshot"), "win_rate_bare": vs("base"), "vs_policy": vs("policy")}
    if same_size:
        out["same_size"] = {"win_rate": vs("own_fewshot"), "win_rate_bare": vs("own")}
    return out


def pct(w: dict) -> str:
    return f"{w['rate']:.1%} [{w['low']:.1%}, {w['high']:.1%}]"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="runs/headline/ppo_ptx",
                    help="the small aligned policy (made by `instructkit pipeline configs/headline.yaml`)")
    ap.add_argument("--policy-world", default="", help="the world the policy was trained in (default: POLICY/../world)")
    ap.add_argument("--out", default="runs/headline/vs_base", help="where the base model and eval go (and the "
                                                                   "world, unless the policy's is the headline one)")
    ap.add_argument("--run", default=None, help="pipeline run that gets headline.json and a fresh report "
                                                "(default: the policy's parent directory; '' = none)")
    ap.add_argument("--policy-base", default=None, help="the policy's own pretrained model, compared at the same "
                                                         "size (default: POLICY/../pretrain if there; '' = skip)")
    ap.add_argument("--seed", type=int, default=None, help="world seed (default: the policy world's)")
    ap.add_argument("--family", default="llama", choices=["llama", "gpt2", "qwen2", "gpt_neox"],
                    help="the base model's family (the demo's policy is a Llama)")
    ap.add_argument("--d-model", type=int, default=192)
    ap.add_argument("--d-ff", type=int, default=512, help="MLP width (GPT-2: 0 = 4 x d_model)")
    ap.add_argument("--layers", type=int, default=9)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--seq-len", type=int, default=128, help="pretraining sequence length = the model's positions")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab-size", type=int, default=1024, help="the base model's tokenizer (the demo's is 1,024)")
    ap.add_argument("--steps", type=int, default=1500, help="pretraining optimiser steps")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--shots", type=int, default=4, help="few-shot demonstrations per prompt (fewer if they do not fit)")
    ap.add_argument("--n-prompts", type=int, default=0, help="eval prompts (0 = all)")
    ap.add_argument("--eval-seeds", default="", help="evaluation seeds, comma-separated (default: the world's seed "
                                                    "only); the first gives the headline figure, each is printed")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", default="headline", help="world size (tests use tiny)")
    return ap


def main() -> int:
    a = parser().parse_args()

    from instructkit.cli import main as ik

    policy, out = Path(a.policy), Path(a.out)
    if not (policy / "instructkit.json").exists():
        print(f"headline: no policy at {policy}; run `instructkit pipeline configs/headline.yaml` first (make bench "
              f"does) or pass --policy DIR (e.g. runs/demo/ppo_ptx)", file=sys.stderr)
        return 2
    own = Path(a.policy_base) if a.policy_base else policy.parent / "pretrain"  # the same-size comparison
    if a.policy_base == "" or not (own / "instructkit.json").exists():
        if a.policy_base:
            print(f"headline: no model at --policy-base {own}", file=sys.stderr)
            return 2
        own = None
    pworld = Path(a.policy_world) if a.policy_world else policy.parent / "world"
    pmeta = json.loads((pworld / "world.json").read_text()) if (pworld / "world.json").exists() else None
    seed = a.seed if a.seed is not None else (pmeta or {}).get("seed", 0)
    base, ev = out / "base", out / "eval"
    try:
        eval_seeds = list(dict.fromkeys(int(x) for x in a.eval_seeds.split(","))) if a.eval_seeds else [seed]
    except ValueError:
        print(f"headline: --eval-seeds {a.eval_seeds!r}: expected integers separated by commas", file=sys.stderr)
        return 2
    # world: the policy's world with the headline corpus; the policy's own when it is that already
    # (configs/headline.yaml trains the policy there)
    reuse = pmeta is not None and pmeta.get("size") == a.size and pmeta.get("seed") == seed
    world = pworld if reuse else out / "world"
    assert ik(["world", "build", "--size", a.size, "--seed", str(seed), "--out", str(world)]) == 0
    same = {}
    if pmeta is not None:
        for name in ("kb.json", "demonstrations.jsonl", "prompts/eval.jsonl"):
            same[name] = sha256(pworld / name) == sha256(world / name)
        print(f"headline: vs the policy's world {pworld}: " + ", ".join(f"{n} {'identical' if s else 'DIFFERENT'}"
                                                                        for n, s in same.items()))
        if not all(same.values()):
            print("headline: the policy was trained in another world (seed or generator); pass --seed or "
                  "--policy-world", file=sys.stderr)
            return 2
    else:
        print(f"headline: no world next to the policy ({pworld}); cannot check it is the same world")

    # base: the ~8x larger model, pretrained on the 8M-token corpus
    t0 = time.time()
    assert ik(["pretrain", f"data.train={world}/corpus/train.jsonl", f"data.val={world}/corpus/heldout.jsonl",
               f"tokenizer.vocab_size={a.vocab_size}", f"init.family={a.family}", f"init.d_model={a.d_model}",
               f"init.n_layers={a.layers}", f"init.n_heads={a.heads}", *([f"init.d_ff={a.d_ff}"] if a.d_ff else []), f"init.max_len={a.seq_len}", f"seq_len={a.seq_len}", f"batch_size={a.batch}",
               f"max_steps={a.steps}", f"optim.lr={a.lr}", "optim.warmup_steps=100", "optim.min_lr_ratio=0.1",
               "save_every=100", "log_every=50", f"threads={a.threads}", f"seed={seed}", f"out={base}"]) == 0
    print(f"headline: base model ready in {time.time() - t0:.0f}s (this invocation)")
    pre = json.loads((base / "instructkit.json").read_text())

    # eval: the policy is the baseline; the base model few-shot and bare, and the policy's own base;
    # once per evaluation seed (the first is the headline figure; the others show the spread)
    models_arg = f"policy={policy},base_fewshot={base},base={base}"
    fewshot_args = [f"fewshot.base_fewshot={a.shots}"]
    if own is not None:
        models_arg += f",own_fewshot={own},own={own}"
        fewshot_args.append(f"fewshot.own_fewshot={a.shots}")
    inputs = {"model.policy": policy, "model.base": base, **({"model.own": own} if own else {})}
    evals = {}
    for i, es in enumerate(eval_seeds):
        ev_s = ev if i == 0 else out / f"eval_seed{es}"
        args = [f"models={models_arg}", *fewshot_args, "baseline=policy", f"prompts={world}/prompts/eval.jsonl",
                f"world={world}", "judge=panel", f"n_prompts={a.n_prompts}", f"seed={es}", f"out={ev_s}"]
        if stale(ev_s, args, inputs):
            print(f"headline: {ev_s} holds the eval of another policy, base or settings: redoing it")
            args.append("overwrite=true")
        assert ik(["eval", *args, f"threads={a.threads}"]) == 0
        evals[es] = json.loads((ev_s / "eval.json").read_text())
    res = evals[eval_seeds[0]]
    models = res["models"]
    from instructkit.sandbox.world import World
    wobj = World.load(world)
    ceilings = {es: ceiling(wobj, ev if i == 0 else out / f"eval_seed{es}", es, own is not None)
                for i, es in enumerate(eval_seeds)}

    p_params, b_params = n_params(policy), n_params(base)
    head = {
        "policy": {"name": policy.name, "path": str(policy), "params": p_params},
        "base": {"path": str(base), "params": b_params, "family": a.family, "d_model": a.d_model, "d_ff": a.d_ff, "n_layers": a.layers,
                 "n_heads": a.heads, "pretrain_seconds": pre.get("seconds"),
                 "pretrain_tokens": a.steps * a.batch * a.seq_len, **pre.get("metrics", {})},
        "ratio": b_params / p_params,
        "shots": a.shots,
        "mean_shots": models["base_fewshot"]["fewshot"]["mean_shots"],
        "judge": res["judge"], "n_prompts": res["n_prompts"], "world": str(world), "seed": seed,
        "eval_seed": eval_seeds[0],
        "same_world_as_policy": same or None,
        **figures(models, own is not None),
        "ceiling": ceilings[eval_seeds[0]],
        "gold_utility": {m: models[m]["gold_utility"]["mean"] for m in models},
        "task_success": {m: models[m]["sandbox"]["task_success"] for m in models},
        "continue_worksheet": {m: models[m]["sandbox"]["continue_worksheet"] for m in models},
        "answer_key_accuracy": {m: models[m].get("alignment_tax", {}).get("fewshot_accuracy") for m in models},
    }
    if own is not None:  # its other figures (gold, task success, ...) are under own_fewshot and own
        head["same_size"] = {"path": str(own), "params": n_params(own), **head["same_size"]}
    if len(evals) > 1:  # every seed's figures, the first included
        head["by_seed"] = {str(es): {**figures(r["models"], own is not None), "ceiling": ceilings[es]}
                           for es, r in evals.items()}
    head["meets_acceptance"] = head["win_rate"]["rate"] >= 0.8 and head["win_rate"]["low"] > 0.7
    # could a perfect policy meet it? the oracle against the same few-shot samples
    head["acceptance_reachable"] = head["ceiling"]["win_rate"]["rate"] >= 0.8 and head["ceiling"]["win_rate"]["low"] > 0.7
    from instructkit.data.jsonl import write_json
    write_json(out / "headline.json", head)

    print(f"\nheadline: {policy.name} ({p_params / 1e6:.2f}M parameters) vs a {head['ratio']:.1f}x larger base "
          f"({b_params / 1e6:.2f}M; {head['base']['pretrain_tokens'] / 1e6:.1f}M tokens, "
          f"{head['base'].get('pretrain_seconds') or 0:.0f}s, val loss {head['base'].get('val_loss', float('nan')):.3f})")
    print(f"  judge: held-out panel, {res['n_prompts']} eval prompts; ties count half; 95% Wilson intervals")
    print(f"  {'':<34} {'policy win rate':>24} {'gold':>7} {'task ok':>8} {'worksheet':>9} {'answer keys':>11}")
    rows = [("base_fewshot", f"vs base, few-shot ({a.shots} shots, {head['mean_shots']:.1f} fit)", head["win_rate"]),
            ("base", "vs base, bare (the prompt alone)", head["win_rate_bare"])]
    if own is not None:
        rows += [("own_fewshot", f"vs its own base ({head['same_size']['params'] / 1e6:.2f}M), few-shot",
                  head["same_size"]["win_rate"]),
                 ("own", "vs its own base, bare", head["same_size"]["win_rate_bare"])]
    for m, label, w in rows:
        print(f"  {label:<34} {pct(w):>24} {head['gold_utility'][m]:7.3f} {head['task_success'][m]:8.1%} "
              f"{head['continue_worksheet'][m]:9.1%} {head['answer_key_accuracy'][m] or float('nan'):11.1%}")
    print(f"  {'(the policy itself)':<34} {'':>24} {head['gold_utility']['policy']:7.3f} "
          f"{head['task_success']['policy']:8.1%} {head['continue_worksheet']['policy']:9.1%} "
          f"{head['answer_key_accuracy']['policy'] or float('nan'):11.1%}")
    c = head["ceiling"]
    print("  ceiling, an oracle (a right answer to every prompt; a tie where the model's is the same):")
    for label, w in [("oracle vs base, few-shot", c["win_rate"]), ("oracle vs base, bare", c["win_rate_bare"]),
                     *([("oracle vs its own base, few-shot", c["same_size"]["win_rate"]),
                        ("oracle vs its own base, bare", c["same_size"]["win_rate_bare"])] if "same_size" in c else []),
                     ("oracle vs the policy", c["vs_policy"])]:
        print(f"  {label:<34} {pct(w):>24}")
    for es, fig in head.get("by_seed", {}).items():
        cols = [fig["win_rate"], fig["win_rate_bare"]] + ([fig["same_size"]["win_rate"], fig["same_size"]["win_rate_bare"]]
                                                          if "same_size" in fig else [])
        print(f"  eval seed {es}: " + " | ".join(f"{w['rate']:.1%}" for w in cols)
              + "  (few-shot | bare" + (" | own few-shot | own bare)" if len(cols) > 2 else ")")
              + f"; oracle vs few-shot {fig['ceiling']['win_rate']['rate']:.1%}")
    print(f"  paper (175B InstructGPT vs 175B GPT-3): 85 ± 3% vs GPT-3, 71 ± 4% vs few-shot GPT-3; acceptance (vs few-shot >= 80%, "
          f"lower bound > 70%): {'met' if head['meets_acceptance'] else 'NOT met'}"
          + ("" if head["acceptance_reachable"] else " (nor does an oracle that answers every prompt right)"))
    print(f"  -> {out / 'headline.json'}")

    run = Path(a.run) if a.run is not None else policy.parent
    if a.run != "" and run.is_dir():
        shutil.copyfile(out / "headline.json", run / "headline.json")
        print(f"  -> {run / 'headline.json'}")
        if (run / "summary.json").exists():  # the run has a report: redo it with the headline row
            assert ik(["report", f"run={run}", f"out={run / 'report.html'}"]) == 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
