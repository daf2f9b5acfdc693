"""`sglang build-test-model`: write a diffusers-format model with random weights, so that
everything can be tried without downloading weights."""

from __future__ import annotations

from typing import Sequence

from sglang_diffusion.cli.args import ArgumentParser


def run(argv: Sequence[str]) -> int:
    from sglang_diffusion.testing import FAMILIES, PRESETS, build_model

    parser = ArgumentParser(prog="sglang build-test-model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", required=True, choices=FAMILIES, help="Model family.")
    parser.add_argument("--preset", default="tiny", choices=PRESETS,
                        help="tiny: tests; small: CPU benchmarks; full: the real transformer size "
                             "(default: tiny).")
    parser.add_argument("--output", required=True, metavar="DIR", help="Folder to write the model to.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights (default: 0).")
    ns = parser.parse_args(list(argv))
    path = build_model(ns.family, ns.output, preset=ns.preset, seed=ns.seed)
    print(path)
    return 0
