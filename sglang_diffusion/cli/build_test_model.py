"""`sglang build-test-model`: write a diffusers-format model with random weights, so that
everything can be tried without downloading weights.

Without --output the model goes under the user's cache (testing.model_cache_dir()), never into
the working directory: seed 0 is the very folder the tests and benchmarks build and reuse."""

from __future__ import annotations

from typing import Sequence

from sglang_diffusion.cli.args import ArgumentParser


def run(argv: Sequence[str]) -> int:
    from sglang_diffusion.testing import FAMILIES, PRESETS, build_model, cached_model, model_cache_dir

    parser = ArgumentParser(prog="sglang build-test-model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", required=True, choices=FAMILIES, help="Model family.")
    parser.add_argument("--preset", default="tiny", choices=PRESETS,
                        help="tiny: tests; small: CPU benchmarks; full: the real transformer size "
                             "(default: tiny).")
    parser.add_argument("--output", metavar="DIR",
                        help=f"Folder to write the model to (default: {model_cache_dir()}/<family>-<preset>, "
                             "with -seed<N> for a seed other than 0).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights (default: 0).")
    ns = parser.parse_args(list(argv))
    if ns.output is None and ns.seed == 0:
        path = cached_model(ns.family, ns.preset)
    else:
        output = ns.output or model_cache_dir() / f"{ns.family}-{ns.preset}-seed{ns.seed}"
        path = build_model(ns.family, output, preset=ns.preset, seed=ns.seed)
    print(path)
    return 0
