"""Which expert of a denoising stage ran at which timestep (Wan2.2 A14B's two experts)."""

import contextlib


@contextlib.contextmanager
def expert_calls(stage):
    """Yields a list that gets (expert index, timestep) for every DiT pass of `stage.experts`
    while the block runs: every pass embeds its timestep first, so `_embed` is wrapped."""
    calls = []

    def recording(i, embed):
        def wrapped(x, t, seq):
            calls.append((i, float(t.flatten()[0])))
            return embed(x, t, seq)
        return wrapped

    for i, expert in enumerate(stage.experts):
        expert._embed = recording(i, expert._embed)
    try:
        yield calls
    finally:
        for expert in stage.experts:
            del expert._embed
