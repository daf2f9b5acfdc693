"""`sglang` / `sglang-diffusion` / `python -m sglang_diffusion`: one CLI, several subcommands.

A user's mistake (any `SGLangDiffusionError`) is printed as one line and exits with code 2;
no traceback.
"""

from __future__ import annotations

import sys
from typing import Sequence

from sglang_diffusion.errors import SGLangDiffusionError

COMMANDS = {
    "generate": ("sglang_diffusion.cli.generate", "Generate an image or a video and exit."),
    "serve": ("sglang_diffusion.cli.serve", "Start the OpenAI-compatible HTTP server."),
    "build-test-model": ("sglang_diffusion.cli.build_test_model",
                         "Write a diffusers-format model with random weights (tiny/small/full presets)."),
}


def _usage() -> str:
    lines = ["usage: sglang <command> [options]", "", "commands:"]
    lines += [f"  {name:<18} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run 'sglang <command> --help' for the options of a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from sglang_diffusion import __version__
        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        import difflib

        match = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f"; did you mean '{match[0]}'?" if match else ""
        print(f"error: unknown command {command!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    import importlib

    module = importlib.import_module(COMMANDS[command][0])
    try:
        return module.run(rest)
    except SGLangDiffusionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
