"""Direct preference methods vs TRL: (a) the same batch through TRL's losses and ours; (b) DPO
training throughput vs TRL's DPOTrainer.

(a) A reference model (random GPT-2) and a policy (the reference plus seeded noise, so that
policy != reference), 8 preference records whose token ids are checked to be identical on both
sides. DPO ("sigmoid"), IPO ("ipo") and SLiC ("hinge") go through DPOTrainer._compute_loss on
TRL's own collated batch (TRL's forward and fused LM head against our shared-prefix forward);
KTO through KTOTrainer._compute_loss (one batch, so TRL's in-batch mismatched pairs are ours).
TRL 1.16's DPOTrainer has no conservative DPO (its "sigmoid" ignores label_smoothing; "robust" is
a different loss), so cDPO is checked against the same formula in CPOTrainer.cpo_loss, fed the
log-ratios; ORPO's odds-ratio term against ORPOTrainer.odds_ratio_loss on the same mean log-probs
(both called as unbound methods with a stand-in `self` holding only beta, label_smoothing and the
device: they read nothing else).

(b) Same model (GPT-2, d_model 128, 4 layers, vocab 1024), same data, same pairs per optimiser
step, same epochs, AdamW (beta2 0.95, no weight decay, clip 1.0), cosine to 10% of the peak LR, no
warm-up, random batches on both sides (our group_by_length is off by default), reference log-probs
precomputed on both sides (TRL: precompute_ref_log_probs=True; ours: the on-disk cache, warm after
the warm-up run). fp32, bf16=False, gradient_checkpointing=False on TRL (its defaults would be
bf16 + checkpointing, ~30x slower on this CPU), one thread, a warm-up run then the median of
`--runs`. Timed span: the training loop only (TRL: trainer.train(); ours: the stage's loop,
`train_seconds`); building, the reference pass and saving are outside on both sides. Wall time
and process CPU time are both printed: on a shared machine the wall clock mostly measures the
neighbours. Quality check: both trained policies' DPO loss and reward accuracy on the training
set and on 128 held-out prompts, computed by the same code. Two data shapes: pairs (K = 2: the
same sequences on both sides) and K = 4 rankings (TRL gets the 6 pairs of each prompt as 6 rows,
shuffled across batches; we encode each completion once and keep a prompt's pairs together)."""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("INSTRUCTKIT_QUIET", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

from common import WORDS, build_base_model, spread, threads, write_jsonl  # noqa: E402


def ranked_records(n: int, k: int, seed: int = 0) -> list[dict]:
    """Word-list instructions with K answers of decreasing quality: right, one word wrong, the wrong
    operation, random words. Prompts end on a token boundary (newline), so that TRL's joint
    tokenisation of prompt + completion equals our separate one."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        ws = [r.choice(WORDS) for _ in range(r.randint(3, 16))]
        op = r.choice(["reverse", "repeat", "sort"])
        right = ws[::-1] if op == "reverse" else (ws if op == "repeat" else sorted(ws))
        one_off = list(right)
        one_off[r.randrange(len(one_off))] = r.choice(WORDS)
        wrong_op = ws if op != "repeat" else ws[::-1]
        noise = [r.choice(WORDS) for _ in range(r.randint(2, 16))]
        comps = [" ".join(c) for c in (right, one_off, wrong_op, noise)][:k]
        out.append({"prompt": f"{op} the words : {' '.join(ws)}\n", "completions": comps, "ranks": list(range(1, k + 1))})
    return out


def as_pairs(records: list[dict]) -> list[dict]:
    """Every ranked pair of every record as a TRL row (rank order = list order here)."""
    return [{"prompt": r["prompt"], "chosen": r["completions"][i], "rejected": r["completions"][j]}
            for r in records for i in range(len(r["completions"])) for j in range(i + 1, len(r["completions"]))]


def trl_args(cls, out: Path, **kw):
    common = dict(output_dir=str(out), report_to="none", use_cpu=True, bf16=False, fp16=False,
                  gradient_checkpointing=False, disable_tqdm=True, save_strategy="no", seed=0,
                  dataloader_num_workers=0, max_length=256, adam_beta2=0.95, weight_decay=0.0,
                  max_grad_norm=1.0, warmup_steps=0)
    return cls(**{**common, **kw})


# ----------------------------------------------------------------------------- (a) loss agreement

def loss_agreement(work: Path, base: Path) -> list[tuple[str, float, float]]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    from instructkit.config import DirectConfig
    from instructkit.losses import ranking_pairs
    from instructkit.models import load_causal_lm, save_model
    from instructkit.stages.direct import (Group, completion_logps, encode_group, flatten, grid_ranks,
                                           kto_batch_loss, preference_loss, to_grid)

    reference, tok = load_causal_lm(base)
    policy, _ = load_causal_lm(base)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    save_model(policy, tok, work / "policy")
    reference.eval(), policy.eval()
    pairs = as_pairs(ranked_records(8, 2, seed=3))
    rows = []

    # ours: encode, one shared-prefix forward per model, the batching path
    groups = []
    for r in pairs:
        p, cs, _ = encode_group(r["prompt"], [r["chosen"], r["rejected"]], tok, 256)
        groups.append(Group(p, cs, [1, 2]))
    with torch.no_grad():
        pi, n = completion_logps(policy, *flatten(groups), tok.pad_token_id)
        ref, _ = completion_logps(reference, *flatten(groups), tok.pad_token_id)
    ranks, valid = grid_ranks(groups)
    PI, REF, N = to_grid(pi, groups), to_grid(ref, groups), to_grid(n, groups)

    def ours(**kw):
        return preference_loss(DirectConfig(**kw), PI, None if kw["loss"] == "orpo" else REF, N, ranks, valid)[0].item()

    # TRL: DPOTrainer on the same records, its own collated batch and forward
    trl_policy = AutoModelForCausalLM.from_pretrained(work / "policy", dtype=torch.float32)
    trl_ref = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    trainer = DPOTrainer(model=trl_policy, ref_model=trl_ref, processing_class=tok, train_dataset=Dataset.from_list(pairs),
                         args=trl_args(DPOConfig, work / "trl-a", per_device_train_batch_size=8))
    ds = trainer.train_dataset
    same_ids = all(ds[i]["prompt_ids"] == g.prompt and ds[i]["chosen_ids"] == g.completions[0]
                   and ds[i]["rejected_ids"] == g.completions[1] for i, g in enumerate(groups))
    assert same_ids, "token ids differ between TRL and instructkit: the comparison would not be the same batch"
    batch = trainer.data_collator([ds[i] for i in range(len(ds))])
    trainer.model.eval()
    for trl_name, ours_kw in (("sigmoid", dict(loss="dpo", beta=0.1)), ("ipo", dict(loss="ipo", tau=0.1)),
                              ("hinge", dict(loss="slic", beta=0.1, delta=1.0))):
        trainer.loss_types, trainer.loss_weights, trainer.beta = [trl_name], [1.0], 0.1
        with torch.no_grad():
            theirs = trainer._compute_loss(trainer.model, batch, False).item()
        rows.append((f"{ours_kw['loss']:<5} vs DPOTrainer loss_type={trl_name}", ours(**ours_kw), theirs))

    # cDPO: the label-smoothed sigmoid of CPOTrainer.cpo_loss, fed the log-ratios (logits = h)
    b, w, l = ranking_pairs(ranks, valid)
    for eps in (0.0, 0.25):
        stand_in = SimpleNamespace(alpha=0.0, beta=0.1, label_smoothing=eps, loss_type="sigmoid", simpo_gamma=0.0,
                                   accelerator=SimpleNamespace(device=torch.device("cpu")))
        theirs = CPOTrainer.cpo_loss(stand_in, PI[b, w] - REF[b, w], PI[b, l] - REF[b, l])[0].mean().item()
        rows.append((f"cdpo  vs CPOTrainer.cpo_loss sigmoid, label_smoothing={eps}",
                     ours(loss="cdpo", beta=0.1, label_smoothing=eps), theirs))

    # ORPO: the odds-ratio term (ours minus our NLL term) against ORPOTrainer.odds_ratio_loss
    stand_in = SimpleNamespace(beta=0.1, accelerator=SimpleNamespace(device=torch.device("cpu")))
    theirs = -ORPOTrainer.odds_ratio_loss(stand_in, PI[b, w] / N[b, w], PI[b, l] / N[b, l])[0].mean().item()
    nll = (-PI[:, 0].sum() / N[:, 0].sum()).item()
    rows.append(("orpo  vs ORPOTrainer.odds_ratio_loss (odds-ratio term)", ours(loss="orpo", orpo_lambda=0.1) - nll, theirs))

    # KTO: KTOTrainer on unpaired records (4 desirable, 4 undesirable), one batch of all 8
    unpaired = [{"prompt": r["prompt"], "completion": r["chosen"] if i % 2 else r["rejected"], "label": bool(i % 2)}
                for i, r in enumerate(pairs)]
    kto = KTOTrainer(model=AutoModelForCausalLM.from_pretrained(work / "policy", dtype=torch.float32),
                     ref_model=AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), processing_class=tok,
                     train_dataset=Dataset.from_list(unpaired),
                     args=trl_args(KTOConfig, work / "trl-kto", per_device_train_batch_size=8, beta=0.1,
                                   desirable_weight=1.0, undesirable_weight=1.0))
    kds = kto.train_dataset
    kgroups = []
    for i, u in enumerate(unpaired):
        p, (c,), _ = encode_group(u["prompt"], [u["completion"]], tok, 256)
        kgroups.append(Group(p, [c], [1], desirable=u["label"]))
        assert kds[i]["prompt_ids"] == p and kds[i]["completion_ids"] == c
    for i, kg in enumerate(kgroups):
        kg.kl_completion = kgroups[i - 1].completions[0]  # our mismatch: the previous example's completion
        assert kds[i]["KL_completion_ids"] == kg.kl_completion
    kto.model.eval()
    with torch.no_grad():
        theirs = kto._compute_loss(kto.model, kto.data_collator([kds[i] for i in range(len(kds))]), False).item()
        kpi, _ = completion_logps(policy, *flatten(kgroups), tok.pad_token_id)
        kref, _ = completion_logps(reference, *flatten(kgroups), tok.pad_token_id)
        kpi_kl, _ = completion_logps(policy, *flatten(kgroups, kl=True), tok.pad_token_id)
        kref_kl, _ = completion_logps(reference, *flatten(kgroups, kl=True), tok.pad_token_id)
    desirable = torch.tensor([kg.desirable for kg in kgroups])
    mine = kto_batch_loss(DirectConfig(loss="kto", beta=0.1), kpi, kref, desirable, kpi_kl, kref_kl)[0].item()
    rows.append(("kto   vs KTOTrainer loss_type=kto", mine, theirs))
    return rows


# ----------------------------------------------------------------------------- (b) throughput

def throughput(work: Path, base: Path, records: list[dict], batch_prompts: int, epochs: int, lr: float,
               runs: int, tag: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from instructkit.config import DirectConfig, load_config
    from instructkit.models import load_causal_lm
    from instructkit.stages import direct

    data = write_jsonl(work / f"{tag}.jsonl", records)
    pairs = as_pairs(records)
    pairs_per_prompt = len(pairs) // len(records)
    steps = epochs * -(-len(records) // batch_prompts)
    tok = AutoTokenizer.from_pretrained(base)

    def ours() -> tuple[float, float, Path]:
        out = work / f"ours-{tag}"
        cfg = load_config(DirectConfig, values={
            "model": str(base), "loss": "dpo", "data": {"train": str(data), "max_len": 256}, "out": str(out),
            "overwrite": True, "epochs": epochs, "batch_size": batch_prompts, "ref_cache": str(work / "cache"),
            "save_every": 10**9, "log_every": 10**9, "select": {"kl": False},
            "optim": {"lr": lr, "warmup_steps": 0, "min_lr_ratio": 0.1}})
        with contextlib.redirect_stdout(io.StringIO()):  # the stage's own start/done lines
            m = direct.run(cfg)
        return m["train_seconds"], m["train_cpu_seconds"], out

    def trl() -> tuple[float, float, Path]:
        out = work / f"trl-{tag}"
        shutil.rmtree(out, ignore_errors=True)
        args = trl_args(DPOConfig, out, per_device_train_batch_size=batch_prompts * pairs_per_prompt,
                        num_train_epochs=epochs, learning_rate=lr, lr_scheduler_type="cosine_with_min_lr",
                        lr_scheduler_kwargs={"min_lr_rate": 0.1}, precompute_ref_log_probs=True, beta=0.1,
                        loss_type=["sigmoid"], logging_steps=10**9)
        trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                             processing_class=tok, train_dataset=Dataset.from_list(pairs), args=args)
        t0, c0 = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):  # the Trainer's metrics dict
            trainer.train()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        trainer.save_model(str(out))
        assert trainer.state.global_step == steps, (trainer.state.global_step, steps)
        return seconds, cpu, out

    result = {}
    for name, fn in (("instructkit", ours), ("TRL", trl)):
        fn()  # warm-up
        wall, cpu = [], []
        for _ in range(runs):
            seconds, cpu_seconds, out = fn()
            wall.append(seconds)
            cpu.append(cpu_seconds)
        result[name] = (wall, cpu, out)

    # quality: both trained policies' DPO loss and reward accuracy on the training set and on 128 fresh
    # prompts of the same kind, computed by the same code for both
    ref_model, _ = load_causal_lm(base)
    held_out = write_jsonl(work / f"{tag}-heldout.jsonl", ranked_records(128, len(records[0]["completions"]), seed=77))
    sets = {}
    for split, path in (("train", data), ("held-out", held_out)):
        groups, _ = direct.load_groups(str(path), load_config(DirectConfig, values={"data": {"max_len": 256}}), tok,
                                       "data.train")
        sets[split] = (groups, direct.compute_reference(ref_model, groups, tok.pad_token_id, 64, "reference"))

    def quality(model_dir: Path) -> dict:
        m, _ = load_causal_lm(model_dir)
        m.eval()
        out = {}
        for split, (groups, ref) in sets.items():
            stats = direct.evaluate_preferences(DirectConfig(loss="dpo"), m, groups, ref, tok.pad_token_id)
            out[split] = (stats["val_loss"], stats["val_reward_accuracy"])
        return out

    return {"pairs_per_step": batch_prompts * pairs_per_prompt, "steps": steps, "n_pairs": len(pairs),
            **{name: (wall, cpu, quality(out)) for name, (wall, cpu, out) in result.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=256, help="prompts in the pairs data set (K = 2)")
    ap.add_argument("--kway-prompts", type=int, default=96, help="prompts in the K = 4 data set")
    ap.add_argument("--batch", type=int, default=16, help="prompts (= pairs) per optimiser step on the pairs data")
    ap.add_argument("--kway-batch", type=int, default=8, help="prompts per optimiser step on the K = 4 data (x 6 pairs)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-throughput", action="store_true")
    a = ap.parse_args()
    n_threads = threads(a.threads)
    import trl

    work = Path(tempfile.mkdtemp(prefix="bench-direct-"))
    corpus = ranked_records(512, 4, seed=9)
    base = build_base_model(work / "base", [r["prompt"] + c for r in corpus for c in r["completions"]],
                            d_model=128, n_layers=4, n_heads=4, vocab_size=1024)
    print(f"direct benchmark: TRL {trl.__version__}, {n_threads} thread(s), fp32 on both sides "
          f"(TRL: bf16=False, gradient_checkpointing=False)\n")

    print("(a) the same batch through TRL's loss and ours (8 pairs, policy != reference)")
    worst = 0.0
    for name, ours_v, theirs in loss_agreement(work, base):
        diff = abs(ours_v - theirs)
        worst = max(worst, diff)
        print(f"  {name:<58} ours {ours_v:.7f}  TRL {theirs:.7f}  |diff| {diff:.1e}  {'ok' if diff <= 1e-5 else 'FAIL'}")
    print(f"  worst |diff| {worst:.1e} (tolerance 1e-5)\n")
    if a.skip_throughput:
        return

    print("(b) DPO training throughput (training loop only; reference log-probs precomputed on both sides)")
    for tag, records, batch_prompts in (("pairs", ranked_records(a.prompts, 2, seed=5), a.batch),
                                        ("kway4", ranked_records(a.kway_prompts, 4, seed=6), a.kway_batch)):
        r = throughput(work, base, records, batch_prompts, a.epochs, a.lr, a.runs, tag)
        med = lambda xs: sorted(xs)[len(xs) // 2]
        print(f"  data: {tag} ({r['n_pairs']} pairs, {r['pairs_per_step']} pairs per step, {r['steps']} steps)")
        for name in ("instructkit", "TRL"):
            wall, cpu, q = r[name]
            print(f"    {name:<11} wall {med(wall):6.2f}s {spread(wall)}  cpu {med(cpu):6.2f}s {spread(cpu)}  "
                  f"{r['n_pairs'] * a.epochs / med(wall):6.1f} pairs/s")
            print(f"    {'':<11} DPO loss / reward accuracy: train {q['train'][0]:.4f} / {q['train'][1]:.3f}, "
                  f"held-out {q['held-out'][0]:.4f} / {q['held-out'][1]:.3f}")
        ratio_wall = med(r["TRL"][0]) / med(r["instructkit"][0])
        ratio_cpu = med(r["TRL"][1]) / med(r["instructkit"][1])
        print(f"    ratio (TRL time / ours): wall {ratio_wall:.2f}x, cpu {ratio_cpu:.2f}x (target >= 1.5x)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
