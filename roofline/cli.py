"""The `roofline` command line: parse, make one API call, format the result.

Every subcommand is a (setup, handler) pair in COMMANDS. Errors from bad input (RooflineError) become
one line on stderr and exit code 2, in `main` only.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence

from roofline.errors import RooflineError

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]

FORMATS = ("table", "csv", "json", "markdown")


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="torchvision:NAME, timm:NAME, hf:TYPE[?k=v&...], path.py:callable or zoo:NAME")
    parser.add_argument("--input-shape", help="input shape such as 1x3x224x224 (several: 1x3x224x224,1x10)")
    parser.add_argument("--batch", type=int, help="batch size (default 1)")
    parser.add_argument("--seq-len", type=int, help="sequence length for language models (default 128)")


def _add_precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", default="fp32", help="fp32, tf32, fp16, bf16, int8, fp8, w8a16, w4a16")


# ---- analyze -------------------------------------------------------------------------------------

def _setup_analyze(parser: argparse.ArgumentParser) -> None:
    _add_model_options(parser)
    _add_precision(parser)
    parser.add_argument("--by", choices=("layer", "op", "type"), default="layer", help="table rows (default: layer)")
    _add_format(parser)


def _run_analyze(args: argparse.Namespace) -> int:
    from roofline import analysis, models
    from roofline.precision import get_precision

    get_precision(args.precision)  # validate before the (possibly slow) model build
    loaded = models.load(args.model, input_shape=args.input_shape, batch=args.batch, seq_len=args.seq_len)
    result = analysis.analyze(loaded, precision=args.precision)
    print(analysis.render(result, by=args.by, fmt=args.format))
    return 0


# ---- the command table ---------------------------------------------------------------------------

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {
    "analyze": ("count MACs, FLOPs, bytes and memory per layer", _setup_analyze, _run_analyze),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roofline", description="Roofline analysis for PyTorch models.")
    parser.add_argument("--no-warnings", action="store_true", help="silence roofline's warnings")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, setup, handler) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        setup(command_parser)
        command_parser.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.no_warnings:
        warnings.filterwarnings("ignore", module="roofline")
    warnings.formatwarning = lambda message, category, *rest: f"roofline: warning: {message}\n"
    try:
        return int(args.handler(args))
    except RooflineError as error:
        print(f"roofline: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("roofline: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
