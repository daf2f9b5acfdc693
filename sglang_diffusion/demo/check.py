"""Judge a demo-model output against its prompt, from the pixels alone.

- background colour: the palette colour most of the border pixels are nearest to;
- object colour: the palette colour most of the other pixels are nearest to;
- shape, per frame from the object's mask: a triangle narrows toward its top (the mean width
  of the top quarter of its bounding box over that of the bottom quarter, ~0.14, against ~1 for
  the others), a square fills its bounding box (~1.0), a circle ~0.79 of it;
- motion: the straight-line fit of the object's centroid over the frames; "none" when it moves
  less than a third of the distance a moving shape covers;
- in frame: the object is there in every frame and does not touch the border.

    from sglang_diffusion.demo.check import judge
    verdict = judge(frames, "a red circle moving right on a blue background")   # [F, H, W, 3] uint8
    verdict.passed, verdict.correct()    # True, {"background": True, "colour": True, ...}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sglang_diffusion.demo import world

PALETTE = np.array(list(world.COLOURS.values()), dtype=np.float32)  # [8, 3]
NAMES = list(world.COLOURS)
BORDER = 2  # pixels of the border ring
MIN_AREA = 0.005  # of the frame: less is "no object in this frame"
MAX_BORDER_TOUCH = 0.005  # of the border ring's pixels that may carry the object's colour
STILL_FRACTION = 1 / 3  # of a moving shape's travel: less is "none"


@dataclass(frozen=True)
class Verdict:
    expected: world.Scene
    background: str | None
    colour: str | None
    shape: str | None
    motion: str | None  # None for an image: not judged
    in_frame: bool
    fill: float  # median object area / bounding-box area
    taper: float  # median top-quarter width / bottom-quarter width
    travel: tuple[float, float]  # fitted centroid displacement over the clip, pixels (x right, y down)

    def correct(self) -> dict[str, bool]:
        """Each judged property: whether it matches the prompt (motion only for videos)."""
        result = {
            "background": self.background == self.expected.background,
            "colour": self.colour == self.expected.colour,
            "shape": self.shape == self.expected.shape,
            "in_frame": self.in_frame,
        }
        if self.motion is not None:
            result["motion"] = self.motion == self.expected.motion
        return result

    @property
    def passed(self) -> bool:
        return all(self.correct().values())


def nearest_colours(frames: np.ndarray) -> np.ndarray:
    """[F, H, W] index into the palette of each pixel's nearest colour."""
    # |x - p|^2 = |x|^2 - 2 x.p + |p|^2, and |x|^2 is the same for every p
    scores = frames.reshape(-1, 3).astype(np.float32) @ (-2 * PALETTE.T) + (PALETTE**2).sum(1)  # [N, 8]
    return scores.argmin(-1).reshape(frames.shape[:-1])


def _majority_3x3(mask: np.ndarray) -> np.ndarray:
    """[F, H, W] bool: pixels with at least 5 of their 3x3 neighbourhood set (drops specks)."""
    padded = np.pad(mask.astype(np.int8), ((0, 0), (1, 1), (1, 1)))
    h, w = mask.shape[1:]
    count = sum(padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))
    return count >= 5


def _shape_features(mask: np.ndarray) -> tuple[float, float]:
    """Fill fraction and taper of one frame's [H, W] object mask."""
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    height, width = bottom - top + 1, right - left + 1
    fill = len(rows) / (height * width)
    widths = mask[top:bottom + 1].sum(axis=1)  # [height]
    quarter = max(1, height // 4)
    taper = widths[:quarter].mean() / max(widths[-quarter:].mean(), 1e-6)
    return float(fill), float(taper)


def classify_shape(fill: float, taper: float) -> str:
    if taper < 0.6:
        return "triangle"
    return "square" if fill > 0.89 else "circle"


def judge(frames: np.ndarray, prompt: str | world.Scene) -> Verdict:
    """`frames` [F, H, W, 3] (or one [H, W, 3] image), uint8, against `prompt`."""
    expected = prompt if isinstance(prompt, world.Scene) else world.parse_prompt(prompt)
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    num_frames, height, width = frames.shape[:3]
    labels = nearest_colours(frames)  # [F, H, W]
    ring = np.zeros((height, width), dtype=bool)
    ring[:BORDER], ring[-BORDER:], ring[:, :BORDER], ring[:, -BORDER:] = True, True, True, True
    background = int(np.bincount(labels[:, ring].ravel(), minlength=len(NAMES)).argmax())
    others = labels[labels != background]
    if others.size < MIN_AREA * height * width:
        return Verdict(expected, NAMES[background], None, None, None if num_frames == 1 else "none", False,
                       0.0, 0.0, (0.0, 0.0))
    colour = int(np.bincount(others, minlength=len(NAMES)).argmax())
    masks = _majority_3x3(labels == colour)  # [F, H, W]
    areas = masks.sum(axis=(1, 2))
    present = areas >= MIN_AREA * height * width
    touching = (labels[:, ring] == colour).mean(axis=1) > MAX_BORDER_TOUCH  # [F]
    in_frame = bool(present.all() and not touching.any())
    if not present.any():
        return Verdict(expected, NAMES[background], NAMES[colour], None, None if num_frames == 1 else "none",
                       False, 0.0, 0.0, (0.0, 0.0))
    features = np.array([_shape_features(m) for m in masks[present]])
    fill, taper = np.median(features, axis=0)
    motion, travel = None, (0.0, 0.0)
    if num_frames > 1:
        motion, travel = _motion(masks, present, min(height, width) / 128)
    return Verdict(expected, NAMES[background], NAMES[colour], classify_shape(fill, taper), motion, in_frame,
                   float(fill), float(taper), travel)


def _motion(masks: np.ndarray, present: np.ndarray, scale: float) -> tuple[str, tuple[float, float]]:
    """Direction of the centroid's least-squares line over the frames where the object is."""
    frames = np.nonzero(present)[0]
    if len(frames) < 2:
        return "none", (0.0, 0.0)
    yy, xx = np.mgrid[0:masks.shape[1], 0:masks.shape[2]]
    cx = np.array([xx[masks[f]].mean() for f in frames])
    cy = np.array([yy[masks[f]].mean() for f in frames])
    span = masks.shape[0] - 1
    dx, dy = np.polyfit(frames, cx, 1)[0] * span, np.polyfit(frames, cy, 1)[0] * span
    if max(abs(dx), abs(dy)) < STILL_FRACTION * world.SPEED * scale * span:
        return "none", (float(dx), float(dy))
    if abs(dx) >= abs(dy):
        return ("right" if dx > 0 else "left"), (float(dx), float(dy))
    return ("down" if dy > 0 else "up"), (float(dx), float(dy))
