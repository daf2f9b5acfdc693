"""The embedded demo model: a small Wan2.1 text-to-video model trained here on synthetic
scenes of one flat-coloured shape on a flat background, shipped inside the package
(`MODEL_DIR`, a diffusers folder) as the default of `sglang generate` / `sglang serve`. This
version draws the background and the object's colour; the object is a blob that does not yet
take the prompt's shape or motion (issue 17).

    from sglang_diffusion.demo import demo_model
    demo = demo_model()       # DemoModel(path, sampling, description)

`world.py` defines what it can draw, `folder.py` its diffusers folder, `train.py` how it is
trained and `check.py` judges an output against its prompt.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

from sglang_diffusion.demo.world import COLOURS, MOTIONS, SHAPES, VOCABULARY, unknown_words
from sglang_diffusion.errors import ModelLoadError

MODEL_DIR = pathlib.Path(__file__).with_name("model")
MODEL_NAME = "demo"  # what --model-path accepts for it

# Demo-sized defaults: the size and length it was trained at, a handful of steps.
DEMO_SAMPLING = dict(height=128, width=128, num_frames=17, fps=8, num_inference_steps=8, guidance_scale=4.0)

DESCRIPTION = (
    "the built-in demo model, trained on synthetic scenes of one flat-coloured shape on a flat background: "
    f"colours {', '.join(COLOURS)}; shapes {', '.join(SHAPES)}; "
    f"moving {', '.join(m for m in MOTIONS if m != 'none')} or still; "
    "e.g. \"a red circle moving right on a blue background\" (128x128, 17 frames at 8 fps; --num-frames 1 "
    "for an image); this version draws the colours and the motion, the shapes about two times in three"
)


@dataclass(frozen=True)
class DemoModel:
    path: pathlib.Path  # the diffusers folder (WanPipeline)
    sampling: dict = field(default_factory=lambda: dict(DEMO_SAMPLING))  # SamplingParams defaults
    description: str = DESCRIPTION  # what it can draw, for the log


def demo_model() -> DemoModel:
    """The shipped demo model; ModelLoadError if this installation has no weights for it."""
    if not (MODEL_DIR / "model_index.json").is_file():
        raise ModelLoadError(f"the demo model's weights are missing from {MODEL_DIR} (a broken installation? "
                             "`python -m sglang_diffusion.demo.train --output-dir` that folder retrains them)")
    return DemoModel(MODEL_DIR)


def is_demo_path(model_path: str | None) -> bool:
    """Whether --model-path names the demo model: absent, `demo`, or its folder."""
    if model_path is None or model_path == MODEL_NAME:
        return True
    try:
        return pathlib.Path(model_path).resolve() == MODEL_DIR.resolve()
    except OSError:
        return False


def vocabulary_note(prompt: str) -> str | None:
    """A note for a prompt with words the demo model does not know (it ignores them), with the
    words it does know; None when every word is known."""
    unknown = unknown_words(prompt)
    if not unknown:
        return None
    return (f"the demo model ignores {', '.join(repr(w) for w in unknown)}: it knows only the words "
            f"{' '.join(VOCABULARY)}")


__all__ = ["DEMO_SAMPLING", "DESCRIPTION", "MODEL_DIR", "MODEL_NAME", "DemoModel", "demo_model", "is_demo_path",
           "vocabulary_note"]
