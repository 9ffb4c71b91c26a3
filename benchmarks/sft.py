"""SFT throughput: instructkit's `sft` stage vs TRL's SFTTrainer, same model, data, batch, epochs.

Both sides: fp32, no gradient checkpointing (TRL's defaults would turn on bf16 and checkpointing,
which on this CPU is ~30x slower and would not be a fair comparison), completion-only loss, the
same max length, one epoch, the same thread count. Timed span: the whole training call on each side
(tokenising the data set, the training loop, saving the model). Prints tokens/s of both, the ratio
and both final training losses (the quality check: nothing was traded away)."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("INSTRUCTKIT_QUIET", "1")

from common import build_base_model, median_time, spread, synthetic_demos, threads, write_jsonl  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1024, help="demonstrations")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    n_threads = threads(a.threads)

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig as TRLConfig, SFTTrainer

    from instructkit.config import load_config, SFTConfig
    from instructkit.stages import sft

    work = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    demos = synthetic_demos(a.n)
    held_out = synthetic_demos(256, seed=1)
    data = write_jsonl(work / "demos.jsonl", demos)
    base = build_base_model(work / "base", [d["prompt"] + d["completion"] for d in demos])
    tok = AutoTokenizer.from_pretrained(base)
    n_tokens = sum(len(tok(d["prompt"] + d["completion"])["input_ids"]) + 1 for d in demos)

    result = {}

    def ours():
        out = work / "ours"
        shutil.rmtree(out, ignore_errors=True)
        cfg = load_config(SFTConfig, values={"model": str(base), "data": {"train": str(data), "max_len": 128},
                                             "out": str(out), "epochs": 1, "batch_size": a.batch, "dropout": 0.0,
                                             "threads": n_threads, "save_every": 10**9, "log_every": 10**9,
                                             "optim": {"lr": 1e-3}})
        sft.run(cfg)
        result["ours"] = held_out_loss(out)

    def trl():
        out = work / "trl"
        shutil.rmtree(out, ignore_errors=True)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        args = TRLConfig(output_dir=str(out), num_train_epochs=1, per_device_train_batch_size=a.batch,
                         learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=0, max_length=128,
                         bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, report_to=[],
                         logging_steps=10**9, save_strategy="no", completion_only_loss=True, packing=False,
                         dataloader_num_workers=0, adam_beta2=0.95, max_grad_norm=1.0, seed=0)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(demos), processing_class=tok)
        out_metrics = trainer.train()
        trainer.save_model(str(out))
        tok.save_pretrained(str(out))
        result["trl"] = held_out_loss(out)

    def held_out_loss(model_dir: Path) -> float:
        """Completion-token loss on 256 held-out demonstrations, the same function for both models."""
        from instructkit.data.encode import encode_demonstrations
        from instructkit.data.records import Demonstration
        from instructkit.config import TemplateConfig
        from instructkit.models import load_causal_lm

        model, mtok = load_causal_lm(model_dir)
        ex = [e for e, _ in encode_demonstrations([Demonstration(d["prompt"], d["completion"]) for d in held_out],
                                                  mtok, TemplateConfig(), 128)]
        return sft.demo_loss(model, ex, mtok.pad_token_id)

    t_ours, ours_times = median_time(ours, a.runs)
    t_trl, trl_times = median_time(trl, a.runs)
    print(f"SFT, 1 epoch of {a.n} demonstrations ({n_tokens} tokens), batch {a.batch}, fp32, {n_threads} thread(s)")
    print(f"  instructkit sft : {t_ours:7.2f}s  {n_tokens / t_ours:9.0f} tokens/s  {spread(ours_times)}  "
          f"held-out loss {result['ours']:.4f}")
    print(f"  TRL SFTTrainer  : {t_trl:7.2f}s  {n_tokens / t_trl:9.0f} tokens/s  {spread(trl_times)}  "
          f"held-out loss {result['trl']:.4f}")
    print("  TRL run with bf16=False, gradient_checkpointing=False (its CPU-hostile defaults off), group_by_length "
          "at its default (off); instructkit with its defaults (group_by_length on, LM head on completion tokens only)")
    print(f"  ratio (instructkit / TRL tokens/s): {t_trl / t_ours:.2f}x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
