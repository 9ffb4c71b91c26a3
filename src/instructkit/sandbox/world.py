"""`World`: build, save and load the sandbox world; judge responses in it.

Every component draws from its own random stream derived from (seed, component name), so the same
seed builds the same files byte for byte, and sizes that share a seed share a world: `headline`
is `default` with a larger corpus."""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from instructkit.data.jsonl import iter_json_lines, write_json, write_jsonl
from instructkit.errors import InputError
from instructkit.sandbox import corpus as C
from instructkit.sandbox import gold as G
from instructkit.sandbox import kb as K
from instructkit.sandbox import tasks as T
from instructkit.sandbox import writers as Wr

VERSION = 1


@dataclass(frozen=True)
class SizeSpec:
    corpus_tokens: int
    heldout_tokens: int
    fewshot: int
    demonstrations: int
    sft_val: int
    rm: int
    ppo: int
    eval: int


SIZES = {
    "tiny": SizeSpec(corpus_tokens=40_000, heldout_tokens=4_000, fewshot=24, demonstrations=96, sft_val=16,
                     rm=64, ppo=32, eval=45),
    "default": SizeSpec(corpus_tokens=2_600_000, heldout_tokens=60_000, fewshot=300, demonstrations=1500,
                        sft_val=150, rm=3000, ppo=2000, eval=600),
    "headline": SizeSpec(corpus_tokens=8_000_000, heldout_tokens=60_000, fewshot=300, demonstrations=1500,
                         sft_val=150, rm=3000, ppo=2000, eval=600),
}
PROMPT_SETS = ("sft_val", "rm", "ppo", "eval")
FILES = ("kb.json", "corpus/train.jsonl", "corpus/heldout.jsonl", "corpus/fewshot.jsonl",
         "demonstrations.jsonl") + tuple(f"prompts/{s}.jsonl" for s in PROMPT_SETS)


def generator_fingerprint() -> str:
    """sha256 of the code that generates worlds: a saved world is reusable only if this matches."""
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in ("kb.py", "tasks.py", "corpus.py", "writers.py", "world.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()


def is_built(out: str | Path, size: str, seed: int) -> bool:
    """True when `out` holds a complete world of this size and seed, made by this code, files intact."""
    root = Path(out)
    try:
        m = json.loads((root / "world.json").read_text(encoding="utf-8"))
        return (m.get("size") == size and m.get("seed") == seed and m.get("generator") == generator_fingerprint()
                and all(_sha256(root / name) == m["files"][name] for name in FILES))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def stream(seed: int, name: str) -> random.Random:
    """An independent, reproducible random stream per component (string seeds hash with SHA-512)."""
    return random.Random(f"instructkit-sandbox/{seed}/{name}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fewshot_probes(kb: K.KB, rng: random.Random, n: int, shots: int = 3) -> list[dict]:
    """Answer-key prompts with `shots` solved examples of one family, then the question."""
    out = []
    for i in range(n):
        fam = T.EXACT_FAMILIES[i % len(T.EXACT_FAMILIES)]
        tasks = []
        while len(tasks) < shots + 1:
            t = T.make_task(fam, kb, rng)
            if fam == "fact" and not kb.is_known(t.params["entity"]):
                continue  # probes measure knowledge and skill, not honesty
            tasks.append(t)
        head = "".join(t.prompt + T.answer(t, kb) + "\n" for t in tasks[:-1])
        out.append({"prompt": head + tasks[-1].prompt, "answer": T.answer(tasks[-1], kb), "task": fam})
    return out


def _prompt_records(kb: K.KB, rng: random.Random, n: int, families, seen: set[str], tag: str
                    ) -> list[tuple[dict, T.Task]]:
    """Up to n prompts never seen before in this world, families in turn (balanced). Some families
    have few distinct prompts (six harmful acts...); once one is exhausted the others fill in."""
    out = []
    live = list(families)
    misses = {f: 0 for f in families}
    i = 0
    while len(out) < n and live:
        fam = live[i % len(live)]
        t = T.make_task(fam, kb, rng)
        if t.prompt in seen:
            misses[fam] += 1
            if misses[fam] > 200:
                live.remove(fam)
            continue
        i += 1
        misses[fam] = 0
        seen.add(t.prompt)
        out.append(({"prompt": t.prompt, "task": fam, "id": f"{tag}-{len(out)}"}, t))
    if tag != "eval":
        rng.shuffle(out)
    return out


@dataclass
class World:
    size: str
    seed: int
    kb: K.KB
    data: dict = field(default_factory=dict)  # file name -> records (after build; lazily after load)
    root: Path | None = None
    manifest: dict = field(default_factory=dict)
    _judged: dict = field(default_factory=dict, repr=False, compare=False)  # (prompt, response) -> Judgement

    # -- build -----------------------------------------------------------------------------------
    @classmethod
    def build(cls, size: str, seed: int) -> "World":
        if size not in SIZES:
            raise InputError(f"unknown world size {size!r}; expected one of {', '.join(SIZES)}", field="size")
        spec = SIZES[size]
        kb = K.build_kb(stream(seed, "kb"))
        data: dict[str, list[dict]] = {}
        data["corpus/train.jsonl"], train_tokens = C.build_corpus(kb, stream(seed, "corpus"), spec.corpus_tokens)
        data["corpus/heldout.jsonl"], _ = C.build_corpus(kb, stream(seed, "heldout"), spec.heldout_tokens)
        data["corpus/fewshot.jsonl"] = fewshot_probes(kb, stream(seed, "fewshot"), spec.fewshot)

        rng = stream(seed, "prompts")
        seen: set[str] = set()
        # held-out evaluation prompts are drawn first, so every family keeps its share
        data["prompts/eval.jsonl"] = [r for r, _ in _prompt_records(kb, rng, spec.eval, T.FAMILIES, seen, "eval")]
        demos = []
        demo_rng = stream(seed, "demonstrators")
        names = list(Wr.DEMONSTRATORS)
        shares = [Wr.DEMONSTRATORS[d][0] for d in names]
        for rec, task in _prompt_records(kb, rng, spec.demonstrations, Wr.DEMO_FAMILIES, seen, "demo"):
            who = demo_rng.choices(names, weights=shares)[0]
            demos.append({"prompt": rec["prompt"], "completion": Wr.demonstrate(task, kb, demo_rng, who),
                          "task": rec["task"], "demonstrator": who, "id": rec["id"]})
        data["demonstrations.jsonl"] = demos
        for name in ("sft_val", "rm", "ppo"):
            families = Wr.DEMO_FAMILIES if name == "sft_val" else T.FAMILIES
            data[f"prompts/{name}.jsonl"] = [r for r, _ in _prompt_records(kb, rng, getattr(spec, name), families,
                                                                            seen, name)]
        world = cls(size, seed, kb, data)
        world.manifest = {"version": VERSION, "size": size, "seed": seed, "generator": generator_fingerprint(),
                          "counts": {f: len(data[f]) for f in FILES if f in data},
                          "corpus_tokens_approx": {"total": sum(train_tokens.values()), **train_tokens},
                          "families": list(T.FAMILIES), "demo_families": list(Wr.DEMO_FAMILIES)}
        return world

    # -- files -----------------------------------------------------------------------------------
    def save(self, out: str | Path) -> dict:
        """Write every file, then `world.json` with a sha256 per file. Returns the manifest."""
        root = Path(out)
        if root.exists() and not root.is_dir():
            raise InputError("expected a directory for the world", path=str(root))
        write_json(root / "kb.json", self.kb.to_json())
        for name in FILES[1:]:
            write_jsonl(root / name, self.data[name])
        manifest = dict(self.manifest)
        manifest["files"] = {name: _sha256(root / name) for name in FILES}
        write_json(root / "world.json", manifest)
        self.root, self.manifest = root, manifest
        return manifest

    @classmethod
    def load(cls, path: str | Path) -> "World":
        root = Path(path)
        mf = root / "world.json"
        if not mf.is_file():
            raise InputError("not a sandbox world (no world.json); build one with `instructkit world build`",
                             path=str(root))
        try:
            manifest = json.loads(mf.read_text(encoding="utf-8"))
            kb = K.KB.from_json(json.loads((root / "kb.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"cannot read the world: {e}", path=str(root)) from None
        return cls(manifest.get("size", "?"), manifest.get("seed", 0), kb, {}, root, manifest)

    def records(self, name: str) -> list[dict]:
        """A world file's records, e.g. `records("prompts/eval.jsonl")` (read on first use after load)."""
        if name not in self.data:
            if self.root is None:
                raise KeyError(name)
            self.data[name] = [obj for _, obj in iter_json_lines(self.root / name)]
        return self.data[name]

    def prompts(self, split: str) -> list[dict]:
        return self.records(f"prompts/{split}.jsonl")

    # -- judging -----------------------------------------------------------------------------------
    def judge(self, prompt: str, response: str) -> G.Judgement:
        key = (prompt, response)
        j = self._judged.get(key)
        if j is None:
            if len(self._judged) > 200_000:
                self._judged.clear()
            j = self._judged[key] = G.judge(self.kb, prompt, response)
        return j

    def utility(self, prompt: str, response: str) -> float:
        return self.judge(prompt, response).utility

    def parse(self, prompt: str) -> T.Task | None:
        return T.parse_prompt(prompt, self.kb)
