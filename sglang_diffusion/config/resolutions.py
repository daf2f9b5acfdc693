"""Resolution shortcuts: `--720p` (or `resolution: 720p`) -> the height and width a model makes
for it, in an orientation.

A name gives the short side in pixels; landscape and portrait put the long side at 16:9 of it,
square makes both sides the short one. Either side is rounded to the model's size multiple
(16 unless the pipeline says otherwise: TI2V-5B takes multiples of 32). A family whose own
training size for a name differs from that rule (Wan's 480p is 832 x 480) lists it in its
`resolutions`. Without an orientation, the family's default size decides (wider than high:
landscape; square; else portrait), and a family without a default size is landscape.
"""

from __future__ import annotations

import dataclasses

from sglang_diffusion.errors import ConfigError

RESOLUTIONS = ("360p", "480p", "540p", "720p", "1080p", "1440p", "2160p")
ORIENTATIONS = ("landscape", "portrait", "square")


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(value / multiple + 0.5) * multiple)


def default_orientation(family_defaults: dict) -> str:
    height, width = family_defaults.get("height"), family_defaults.get("width")
    if height is None or width is None or width > height:
        return "landscape"
    return "square" if width == height else "portrait"


def resolution_size(name: str, orientation: str | None, family=None,
                    multiple: tuple[int, int] = (16, 16)) -> tuple[int, int]:
    """(height, width) of resolution `name` in `orientation` for `family` (a config.families.Family
    or None), rounded to `multiple` (height, width)."""
    if name not in RESOLUTIONS:
        raise ConfigError(f"resolution {name!r} is not one of {', '.join(RESOLUTIONS)}")
    defaults = family.defaults if family is not None else {}
    orientation = orientation or default_orientation(defaults)
    if orientation not in ORIENTATIONS:
        raise ConfigError(f"orientation {orientation!r} is not one of {', '.join(ORIENTATIONS)}")
    short = int(name[:-1])
    own = family.resolutions.get(name) if family is not None else None
    long_side = own[1] if own is not None else short * 16 / 9
    short_side = own[0] if own is not None else short
    if orientation == "square":
        long_side = short_side
    height, width = (short_side, long_side) if orientation != "portrait" else (long_side, short_side)
    return _round_to(height, multiple[0]), _round_to(width, multiple[1])


def apply_resolution(params, family=None, multiple: tuple[int, int] = (16, 16)):
    """`params` (SamplingParams) with its resolution turned into height and width; unchanged
    without one."""
    if params.resolution is None:
        return params
    height, width = resolution_size(params.resolution, params.orientation, family, multiple)
    return dataclasses.replace(params, height=height, width=width, resolution=None, orientation=None)
