"""The `kvserve` command: `serve` the HTTP API, list `models`, `train` and `eval` the
demo recipes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from server.loadtest_command import add_loadtest_parser, loadtest
from server.serve_command import add_serve_arguments, models_command, serve


def _recipe_help() -> str:
    from model_core.recipes import RECIPES

    width = max(len(name) for name in RECIPES)
    return "recipes:\n" + "\n".join(
        f"  {name:<{width}}  {r.summary}" for name, r in RECIPES.items()
    )


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="kvserve",
        description="kvserve: a PyTorch transformer inference server.",
        epilog="start here: `kvserve serve` serves the bundled demo models on "
        "http://127.0.0.1:8000 (open it in a browser for the playground, /docs for the API)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve the HTTP API (the bundled demos by default)",
        description="Serve the HTTP API. Every flag is also a KVSERVE_* environment "
        "variable; flags win. Lists are comma-separated.",
        epilog="examples:\n  kvserve serve\n  kvserve serve --model-dir ./models "
        "--host 0.0.0.0 --port 8080\n  KVSERVE_API_KEYS=secret kvserve serve",
        formatter_class=fmt,
    )
    add_serve_arguments(serve)
    models = commands.add_parser(
        "models", help="list and validate the checkpoints of a model directory"
    )
    models.add_argument(
        "--model-dir", type=Path, default=None, help="directory (default: the bundled demos)"
    )
    models.add_argument("--json", action="store_true", help="print JSON")
    commands.add_parser("version", help="print the installed version")
    add_loadtest_parser(commands)
    train = commands.add_parser(
        "train", help="train a demo recipe", epilog=_recipe_help(), formatter_class=fmt
    )
    train.add_argument("recipe", help="recipe name (listed below)")
    train.add_argument(
        "--out", type=Path, help="checkpoint directory (default: the bundled demo's)"
    )
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    evaluate = commands.add_parser(
        "eval", help="re-measure a recipe's quality figures", epilog=_recipe_help(),
        formatter_class=fmt,
    )  # fmt: skip
    evaluate.add_argument("recipe", help="recipe name (listed below)")
    evaluate.add_argument(
        "--checkpoint", type=Path, help="checkpoint directory (default: the bundled demo's)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "models":
        return models_command(args)
    if args.command == "loadtest":
        return loadtest(args)
    if args.command == "version":
        from importlib.metadata import version

        print(version("kvserve"))
        return 0
    from model_core.recipes import RECIPES, bundled_dir

    recipe = RECIPES.get(args.recipe)
    if recipe is None:
        print(f"kvserve: unknown recipe {args.recipe!r}\n{_recipe_help()}", file=sys.stderr)
        return 2
    if args.command == "train":
        out = args.out or bundled_dir() / recipe.name
        metrics = recipe.train(out, args.seed)
        print(f"{recipe.name}: wrote {out}; metrics {json.dumps(metrics, sort_keys=True)}")
    else:
        path = args.checkpoint or bundled_dir() / recipe.name
        metrics = recipe.evaluate(path)
        print(f"{recipe.name}: {json.dumps(metrics, sort_keys=True)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
