"""Iterated RLHF (`rounds:`, a top-level block of a pipeline file): round 1 is the ordinary stages;
rounds 2..count are expanded by `expand_rounds` when the file loads, before anything runs, into
ordinary stages named `round_R/prompts` (the built-in `slice` command: `n_prompts` fresh lines of
`prompts`, lines [(R-2)n, (R-1)n) modulo the file), `round_R/rankings` (the `label` command sampling
the previous round's policy), `round_R/rm` (a copy of the `rm.from` stage trained on round 1's
rankings plus every later round's, compared with the previous round's RM on the held-out prompts of
the newest rankings: `eval.previous`, gates.latest in its instructkit.json), `round_R/policy` (a copy
of the `policy.from` PPO stage continuing from the previous round's policy against this round's RM;
the KL penalty stays measured to round 1's `policy`, the SFT model, or with `policy: {from: ...,
reference: previous}` to the previous round's policy, so that each round may move a KL budget
further) and, with `eval.from`, `round_R/eval` (roundR vs round(R-1), or vs sft with
`eval: {from: eval, baseline: sft}`, sft also sampled). With `policy: {from: DPO_STAGE}` (a
`dpo` stage, any of its losses) round_R/policy is that stage run from the previous round's policy,
which is also its frozen reference, on round R's rankings only (iterated, on-policy preference
optimisation); `rm` is then optional and only adds each round's RM and its gates. Their outputs
live under ROOT/round_R/.
They are inserted after the last stage they copy (past its `group`; or after the stage named by
`after:`), so later stages can use `{round_2/policy}`; skipping, resuming and `--from round_2/rm`
work as for any stage. configs/rounds.yaml (which extends configs/demo.yaml) is an example."""
from __future__ import annotations

import copy

from instructkit.config_io import deep_merge
from instructkit.data.jsonl import atomic_open, check_readable_file, split_paths
from instructkit.errors import InputError


ROUNDS_KEYS = {"count", "prompts", "n_prompts", "label", "rm", "policy", "eval", "after"}
ROUNDS_FROM = {"rm": ("rm",), "policy": ("ppo", "dpo"), "eval": ("eval",)}  # block key -> commands it may copy


def check_rounds(block, raw_stages: list[dict], path: str) -> tuple[dict | None, int]:
    """Validate a `rounds:` block -> (block, index of the stage the rounds follow); (None, -1) without one."""
    if block is None:
        return None, -1

    def bad(message: str, field: str = ""):
        raise InputError(message, path=path, field="rounds" + (f".{field}" if field else ""))

    if not isinstance(block, dict):
        bad("expected a mapping (count, prompts, n_prompts, label, rm, policy, eval)")
    for key in block:
        if key not in ROUNDS_KEYS:
            bad(f"unknown field (known: {', '.join(sorted(ROUNDS_KEYS))})", str(key))
    index = {s["name"]: i for i, s in enumerate(raw_stages)}
    count = block.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        bad(f"expected an integer >= 1 (round 1 is the ordinary stages), got {count!r}", "count")
    if not isinstance(block.get("prompts"), str) or not block["prompts"]:
        bad("expected the prompts file each round draws fresh prompts from", "prompts")
    n = block.get("n_prompts")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        bad(f"expected an integer >= 1, got {n!r}", "n_prompts")
    label = block.get("label")
    if not isinstance(label, dict):
        bad("expected a mapping {command, args}", "label")
    for key in label:
        if key not in ("command", "args"):
            bad("unknown field (known: args, command)", f"label.{key}")
    if not isinstance(label.get("command", "world label"), str) or not isinstance(label.get("args") or {}, dict):
        bad("expected `command` (e.g. world label) and a mapping of `args`", "label")
    for key in ("model", "prompts", "out"):
        if key in (label.get("args") or {}):
            bad("set by each round (the previous round's policy, the round's prompts and rankings file)",
                f"label.args.{key}")
    sources = []
    policy = block.get("policy")
    direct = (isinstance(policy, dict) and isinstance(policy.get("from"), str) and policy["from"] in index
              and raw_stages[index[policy["from"]]]["command"] == "dpo")
    for key, commands in ROUNDS_FROM.items():
        command = " or ".join(f"`{c}`" for c in commands)
        spec = block.get(key)
        if spec is None and (key == "eval" or (key == "rm" and direct)):
            continue  # a direct method needs no reward model; `rm` then only adds its gates per round
        if not isinstance(spec, dict) or "from" not in spec:
            bad(f"expected {{from: STAGE}}, the {command} stage each round repeats", key)
        known = {"eval": ("from", "baseline"), "policy": ("from", "reference")}.get(key, ("from",))
        for k in spec:
            if k not in known:
                bad(f"unknown field (known: {', '.join(known)})", f"{key}.{k}")
        name = spec["from"]
        if not isinstance(name, str) or name not in index:
            bad(f"no stage {name!r} (stages: {', '.join(index)})", f"{key}.from")
        if raw_stages[index[name]]["command"] not in commands:
            bad(f"stage {name!r} runs `{raw_stages[index[name]]['command']}`, expected {command}", f"{key}.from")
        if spec.get("baseline", "previous") not in ("previous", "sft"):
            bad(f"expected previous or sft, got {spec['baseline']!r}", f"{key}.baseline")
        if spec.get("reference", "sft") not in ("previous", "sft"):
            bad(f"expected sft or previous (the KL penalty's reference), got {spec['reference']!r}", f"{key}.reference")
        if key == "policy" and direct and "reference" in spec:
            bad("a direct method's reference is the model it starts from: each round's is the previous round's "
                "policy", f"{key}.reference")
        sources.append(index[name])
    last = max(sources)
    if "after" in block:
        if not isinstance(block["after"], str) or block["after"] not in index:
            bad(f"no stage {block['after']!r} (stages: {', '.join(index)})", "after")
        if index[block["after"]] < last:
            bad(f"the rounds copy {raw_stages[last]['name']!r}, so they must come after it", "after")
        last = index[block["after"]]
    group = raw_stages[last].get("group")
    while group and last + 1 < len(raw_stages) and raw_stages[last + 1].get("group") == group:
        last += 1  # never split a group of side-by-side stages
    return block, last


def expand_rounds(block: dict, by_name: dict[str, Stage], names: dict, stage_args: dict, path: str) -> list[Stage]:
    """Rounds 2..count as ordinary stages (see the module docstring); adds their outputs to `names`."""
    from instructkit.pipeline import Stage, _format  # (pipeline imports this module)

    pol_src = by_name[block["policy"]["from"]]
    rm_src = by_name[block["rm"]["from"]] if block.get("rm") else None  # optional with a direct method
    ev_src = by_name[block["eval"]["from"]] if block.get("eval") else None
    direct = pol_src.command == "dpo"  # each round: the method on this round's rankings, from the last policy
    data_src = rm_src or pol_src
    first_rankings = split_paths((data_src.args.get("data") or {}).get("train") or "")
    # the SFT model: PPO's reference (or its starting policy); a direct method's starting model
    reference = pol_src.args.get("model") if direct else pol_src.args.get("reference") or pol_src.args.get("policy")
    kl_to_previous = block["policy"].get("reference", "sft") == "previous"
    if not first_rankings:
        raise InputError(f"stage {data_src.name!r} has no data.train to extend", path=path,
                         field="rounds.rm.from" if rm_src else "rounds.policy.from")
    if not reference:
        raise InputError(f"stage {pol_src.name!r} has no `{'model' if direct else 'policy'}` to continue from",
                         path=path, field="rounds.policy.from")
    prompts = _format(block["prompts"], names, "rounds.prompts", path)
    label_args = _format(block["label"].get("args") or {}, names, "rounds.label.args", path)
    n, root = block["n_prompts"], names["out"]
    stages: list[Stage] = []

    def add(name: str, command: str, args: dict) -> str:
        args = deep_merge(args, _format(stage_args.get(name, {}), names, f"{name}.args", path))
        names[name] = args["out"]
        stages.append(Stage(name, command, args, args["out"]))
        return args["out"]

    rankings, previous = list(first_rankings), pol_src.out  # round 1's policy is the copied stage's output
    previous_rm = rm_src.out if rm_src else ""
    for r in range(2, block["count"] + 1):
        d = f"{root}/round_{r}"
        slice_file = add(f"round_{r}/prompts", "slice",
                         {"input": prompts, "start": (r - 2) * n, "n": n, "out": f"{d}/prompts.jsonl"})
        rankings.append(add(f"round_{r}/rankings", block["label"].get("command", "world label"),
                            {**copy.deepcopy(label_args), "model": previous, "prompts": slice_file,
                             "out": f"{d}/rankings.jsonl"}))
        if rm_src:
            rm_args = copy.deepcopy(rm_src.args)
            rm_args["data"] = {**(rm_args.get("data") or {}), "train": list(rankings)}
            rm_args["eval"] = {**(rm_args.get("eval") or {}), "previous": previous_rm}  # both on the new samples
            rm = previous_rm = add(f"round_{r}/rm", rm_src.command, {**rm_args, "out": f"{d}/rm"})
        if direct:  # on-policy: this round's rankings of the last policy, which is also the frozen reference
            pol_args = copy.deepcopy(pol_src.args)
            pol_args["data"] = {**(pol_args.get("data") or {}), "train": rankings[-1]}
            policy = add(f"round_{r}/policy", pol_src.command, {**pol_args, "model": previous, "out": f"{d}/policy"})
        else:
            policy = add(f"round_{r}/policy", pol_src.command,
                         {**copy.deepcopy(pol_src.args), "policy": previous,
                          "reference": previous if kl_to_previous else reference,
                          "reward_model": rm, "out": f"{d}/policy"})
        if ev_src:
            baseline = "sft" if block["eval"].get("baseline") == "sft" else f"round{r - 1}"
            add(f"round_{r}/eval", ev_src.command,
                {**copy.deepcopy(ev_src.args), "models": [f"round{r}={policy}", f"round{r - 1}={previous}",
                                                          f"sft={reference}"],
                 "baseline": baseline, "out": f"{d}/eval"})
        previous = policy
    return stages


def slice_lines(args: dict) -> None:
    """Built-in command `slice`: lines [start, start + n) of a JSONL file, wrapping past its end,
    written atomically to `out` (each round's fresh prompts)."""
    known = {"input", "start", "n", "out"}
    for key in args:
        if key not in known:
            raise InputError(f"unknown field (known: {', '.join(sorted(known))})", field=f"slice.{key}")
    start, n = args.get("start", 0), args.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or isinstance(start, bool) or not isinstance(start, int):
        raise InputError(f"expected integers n >= 1 and start, got n={n!r}, start={start!r}", field="slice.n")
    src = check_readable_file(args.get("input", ""), "JSONL file")
    lines = [line for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise InputError("file is empty: no records", path=str(src))
    with atomic_open(args["out"]) as f:
        for i in range(start, start + n):
            f.write(lines[i % len(lines)] + "\n")
