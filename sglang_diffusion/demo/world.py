"""The world the demo model knows: one flat-coloured shape on a flat background, still or
moving in a straight line, and the prompts that describe it.

    a red circle moving right on a blue background
    an orange triangle on a white background          (no motion words: it stands still)

`Scene` is what a prompt says; `Layout` adds where the shape is and how big (what the prompt
leaves open); `render` draws a layout as frames, the training data and the checker's
ground truth alike. Everything is a pure function of its arguments and a seed.

The (colour, shape, motion, background) combinations in `held_out` are never shown in
training: the quality benchmark asks for them to see the model compose words it only met
apart.
"""

from __future__ import annotations

import itertools
import re
import zlib
from dataclasses import dataclass

import numpy as np

from sglang_diffusion.errors import InvalidRequestError

# Saturated colours whose nearest neighbours stay >= 128 apart in RGB (orange to red, yellow).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (20, 170, 40),
    "blue": (30, 60, 230),
    "yellow": (250, 230, 20),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
    "purple": (140, 30, 170),
    "orange": (250, 130, 10),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "none")
# Pixels per frame of a moving shape: 3 px x 16 steps = 48 px across a 17-frame clip.
SPEED = 3.0
# Shape half-size range in pixels at 128x128 (bounding box 32-48 px), scaled with the frame.
HALF_SIZE = (16.0, 24.0)
MARGIN = 4.0  # the whole path stays this far inside the frame

GRAMMAR_WORDS = ("a", "an", "moving", "on", "background")
VOCABULARY: tuple[str, ...] = (*GRAMMAR_WORDS, *COLOURS, *SHAPES, *(m for m in MOTIONS if m != "none"))


@dataclass(frozen=True)
class Scene:
    """What a prompt says: object colour, shape, motion ("none" for still) and background."""

    colour: str
    shape: str
    motion: str
    background: str

    def prompt(self) -> str:
        article = "an" if self.colour[0] in "aeiou" else "a"
        motion = "" if self.motion == "none" else f" moving {self.motion}"
        return f"{article} {self.colour} {self.shape}{motion} on a {self.background} background"


@dataclass(frozen=True)
class Layout:
    """A scene placed in a frame: the shape's centre in the first frame and its half-size,
    in pixels of a `width` x `height` frame."""

    scene: Scene
    width: int
    height: int
    x: float
    y: float
    half: float


def words(text: str) -> list[str]:
    """The prompt's words as the model's tokenizer sees them: lower case, anything but
    letters is a space (the tokenizer's normalizer does the same)."""
    return re.sub(r"[^a-z]+", " ", text.lower()).split()


def unknown_words(text: str) -> list[str]:
    """The words of `text` the model does not know (it ignores them), in order, once each."""
    return list(dict.fromkeys(w for w in words(text) if w not in VOCABULARY))


def parse_prompt(text: str) -> Scene:
    """The scene a prompt asks for. Unknown words are skipped; the first colour is the
    object's, the colour before "background" (or the second colour) the background's."""
    known = [w for w in words(text) if w in VOCABULARY]
    colours = [w for w in known if w in COLOURS]
    shapes = [w for w in known if w in SHAPES]
    motions = [w for w in known if w in MOTIONS]
    if len(colours) != 2 or len(shapes) != 1 or len(motions) > 1:
        raise InvalidRequestError(
            f"prompt {text!r} does not describe a demo scene: it needs one shape ({', '.join(SHAPES)}), "
            f"two colours ({', '.join(COLOURS)}: the object's and the background's) and at most one "
            f"motion ({', '.join(m for m in MOTIONS if m != 'none')}), as in "
            f"{Scene('red', 'circle', 'right', 'blue').prompt()!r}"
        )
    if colours[0] == colours[1]:
        raise InvalidRequestError(f"prompt {text!r}: the object and the background have the same colour")
    return Scene(colours[0], shapes[0], motions[0] if motions else "none", colours[1])


def all_scenes() -> list[Scene]:
    """Every scene the vocabulary can describe (8 x 7 x 3 x 5 = 840), in a fixed order."""
    return [
        Scene(c, s, m, b)
        for c, s, m, b in itertools.product(COLOURS, SHAPES, MOTIONS, COLOURS)
        if c != b
    ]


def held_out(scene: Scene) -> bool:
    """About one scene in eight, chosen by a hash of its words: never in the training data."""
    return zlib.crc32(scene.prompt().encode()) % 8 == 0


def training_scenes() -> list[Scene]:
    return [s for s in all_scenes() if not held_out(s)]


def held_out_scenes() -> list[Scene]:
    return [s for s in all_scenes() if held_out(s)]


def place(scene: Scene, width: int, height: int, num_frames: int, rng: np.random.Generator,
          jitter: float | None = None) -> Layout:
    """A random size and start position for `scene` whose whole path stays in the frame.

    With `jitter`, the path's midpoint lies within `jitter` pixels (at 128x128, scaled with the
    frame) of the frame's centre on each axis, as far as the frame allows: the centred scenes the
    DiT trains on, so that what a prompt asks for decides where the shape is in every frame."""
    scale = min(width, height) / 128
    half = rng.uniform(*HALF_SIZE) * scale
    dx, dy = velocity(scene.motion, scale)
    travel_x, travel_y = dx * (num_frames - 1), dy * (num_frames - 1)
    lo_x, hi_x = MARGIN + half + max(0.0, -travel_x), width - MARGIN - half - max(0.0, travel_x)
    lo_y, hi_y = MARGIN + half + max(0.0, -travel_y), height - MARGIN - half - max(0.0, travel_y)
    if lo_x > hi_x or lo_y > hi_y:
        raise InvalidRequestError(f"a {width}x{height} frame is too small for {num_frames} frames of motion")
    if jitter is not None:  # the ranges above are centred on the start that centres the path
        spread = jitter * scale
        lo_x, hi_x = max(lo_x, (width - travel_x) / 2 - spread), min(hi_x, (width - travel_x) / 2 + spread)
        lo_y, hi_y = max(lo_y, (height - travel_y) / 2 - spread), min(hi_y, (height - travel_y) / 2 + spread)
    return Layout(scene, width, height, rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y), half)


def velocity(motion: str, scale: float = 1.0) -> tuple[float, float]:
    """Pixels per frame (x right, y down) of `motion`."""
    step = SPEED * scale
    return {"left": (-step, 0.0), "right": (step, 0.0), "up": (0.0, -step), "down": (0.0, step),
            "none": (0.0, 0.0)}[motion]


def shape_mask(shape: str, width: int, height: int, x: float, y: float, half: float) -> np.ndarray:
    """[H, W] bool: pixels whose centre lies inside the shape centred at (x, y). The triangle
    points up, its base and height both 2 * half (it fills half its bounding box)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    u, v = (xx - x) / half, (yy - y) / half  # [-1, 1] inside the bounding box
    if shape == "circle":
        return u * u + v * v <= 1.0
    inside = (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if shape == "square":
        return inside
    return inside & (np.abs(u) <= (v + 1.0) / 2.0)  # width grows from 0 at the top to 2*half at the base


def render(layout: Layout, num_frames: int) -> np.ndarray:
    """[F, H, W, 3] uint8 frames of `layout`."""
    scene, scale = layout.scene, min(layout.width, layout.height) / 128
    dx, dy = velocity(scene.motion, scale)
    frames = np.empty((num_frames, layout.height, layout.width, 3), dtype=np.uint8)
    for f in range(num_frames):
        frames[f] = COLOURS[scene.background]
        mask = shape_mask(scene.shape, layout.width, layout.height, layout.x + dx * f, layout.y + dy * f, layout.half)
        frames[f][mask] = COLOURS[scene.colour]
    return frames


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample `index` of a data stream seeded `seed`: any sample can be
    redrawn on its own, so a resumed run sees the same data."""
    return np.random.default_rng([seed, index])
