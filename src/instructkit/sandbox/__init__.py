"""The sandbox: a procedurally generated world in which InstructGPT runs in miniature.

    World.build(size, seed) / world.save(dir) / World.load(dir)   kb, corpus, demonstrations, prompt sets
    world.judge(prompt, response) -> Judgement                     the hidden gold utility + Table 3 flags
    labelers.pool("train" | "heldout"), label_records, agreement   simulated labelers
    metrics.summarize(world, pairs)                                the paper's claims, measured

The spec is SANDBOX.md in the design notes; each module says what it owns."""
from instructkit.sandbox.gold import Judgement
from instructkit.sandbox.world import SIZES, World

__all__ = ["World", "Judgement", "SIZES"]
