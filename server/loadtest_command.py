"""`kvserve loadtest`: the Locust load test of `clients/locustfile.py`, headless for a
bounded time, writing Locust's CSV files (`<out>/kvserve_stats.csv`, ...) and its HTML
report (`<out>/report.html`). It runs `python -m locust` as a child process and exits
with its code (non-zero when any request failed).

The server never imports `clients`: the locustfile is found by path (see
`locustfile_path`) and runs in Locust's own process, with its settings passed as the
`KVSERVE_*` environment variables that the locustfile documents.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

USER_CLASSES = (
    "StreamingGenerateUser",
    "PredictUser",
    "SessionUser",
    "SpeculativeUser",
    "CompletionsUser",
    "MixedUser",
)

# Flags passed to the locustfile as environment variables:
# dest -> (variable, metavar, what it is, the locustfile's default).
LOCUSTFILE_SETTINGS = {
    "model": ("KVSERVE_MODEL", "NAME", "text model", "text-lm"),
    "draft_model": ("KVSERVE_DRAFT_MODEL", "NAME", "speculative draft model", "text-lm-draft"),
    "regression_model": ("KVSERVE_REGRESSION_MODEL", "NAME", "predict model", "sine-regressor"),
    "prompt_tokens": ("KVSERVE_PROMPT_TOKENS", "DIST", "prompt tokens", "16:256"),
    "new_tokens": ("KVSERVE_NEW_TOKENS", "DIST", "max_new_tokens", "16:128"),
    "session_turns": ("KVSERVE_SESSION_TURNS", "DIST", "turns per session", "3"),
    "predict_steps": ("KVSERVE_PREDICT_STEPS", "DIST", "steps per predict sequence", "16:128"),
    "predict_batch": ("KVSERVE_PREDICT_BATCH", "DIST", "sequences per predict", "1:4"),
    "wait": ("KVSERVE_WAIT", "SECONDS", "pause between a user's tasks, LO:HI or N", "0:0.5"),
    "mix": (
        "KVSERVE_MIX",
        "K=W,...",
        "MixedUser weights of generate, predict, session, speculative, completions",
        "4,2,2,1,1",
    ),
}


def add_loadtest_parser(commands: argparse._SubParsersAction) -> None:
    """The `loadtest` sub-command of `kvserve`."""
    parser = commands.add_parser(
        "loadtest",
        help="run the Locust load test against a server (needs kvserve[loadtest])",
        description="Run clients/locustfile.py headless against a running server for a\n"
        "bounded time; write Locust's CSV files and HTML report to --out. Exit code:\n"
        "Locust's (1 when any request failed).\n\n"
        "A distribution (DIST) is N, LO:HI (uniform) or lognormal:MEAN:SIGMA:MAX. Flags\n"
        "not given leave their KVSERVE_* variable, else the locustfile's default.\n"
        "KVSERVE_API_KEY, when set, is sent as a Bearer token.",
        epilog="example:\n  kvserve loadtest --host http://127.0.0.1:8000 --users 8 "
        "--run-time 30s --user-classes StreamingGenerateUser,PredictUser --out loadtest/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host",
        default="http://127.0.0.1:8000",
        metavar="URL",
        help="server URL (default %(default)s)",
    )
    parser.add_argument(
        "--users", type=int, default=8, metavar="N", help="concurrent users (default 8)"
    )
    parser.add_argument(
        "--spawn-rate",
        type=float,
        default=None,
        metavar="N",
        help="users started per second (default: all)",
    )
    parser.add_argument(
        "--run-time",
        default="30s",
        metavar="TIME",
        help="how long, e.g. 20s, 5m (default %(default)s)",
    )
    parser.add_argument(
        "--user-classes",
        default="MixedUser",
        metavar="A,B",
        help=f"user classes, comma-separated, of: {', '.join(USER_CLASSES)} (default %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("loadtest"),
        metavar="DIR",
        help="report directory (default loadtest/)",
    )
    for dest, (env, metavar, text, default) in LOCUSTFILE_SETTINGS.items():
        parser.add_argument(
            f"--{dest.replace('_', '-')}",
            dest=dest,
            default=None,
            metavar=metavar,
            help=f"{text} (env {env}, default {default})",
        )
    parser.add_argument(
        "--locust-args",
        default="",
        metavar="ARGS",
        help='more Locust options, one string, e.g. "--stop-timeout 10s"',
    )


def locustfile_path() -> Path:
    """Where clients/locustfile.py is, found without importing `clients`."""
    spec = importlib.util.find_spec("clients")
    if spec is not None and spec.submodule_search_locations:
        places = [Path(p) for p in spec.submodule_search_locations]
    else:
        places = [Path(__file__).resolve().parent.parent / "clients"]
    for place in places:
        if (place / "locustfile.py").is_file():
            return place / "locustfile.py"
    raise FileNotFoundError(f"no locustfile.py in {', '.join(map(str, places))}")


def locust_command(args: argparse.Namespace, locustfile: Path) -> list[str]:
    classes = [c.strip() for c in args.user_classes.split(",") if c.strip()]
    out: Path = args.out
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile),
        "--headless",
        "--only-summary",
        "--host",
        args.host,
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate if args.spawn_rate is not None else args.users),
        "--run-time",
        args.run_time,
        "--csv",
        str(out / "kvserve"),
        "--html",
        str(out / "report.html"),
        *shlex.split(args.locust_args),
        *classes,
    ]


def loadtest(args: argparse.Namespace) -> int:
    classes = [c.strip() for c in args.user_classes.split(",") if c.strip()]
    unknown = [c for c in classes if c not in USER_CLASSES]
    if unknown or not classes:
        print(
            f"kvserve loadtest: --user-classes: unknown {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(USER_CLASSES)}",
            file=sys.stderr,
        )
        return 2
    if args.users < 1:
        print("kvserve loadtest: --users must be >= 1", file=sys.stderr)
        return 2
    if importlib.util.find_spec("locust") is None:
        print(
            "kvserve loadtest: Locust is not installed: pip install 'kvserve[loadtest]' "
            "(or pip install locust)",
            file=sys.stderr,
        )
        return 2
    try:
        locustfile = locustfile_path()
    except FileNotFoundError as exc:
        print(f"kvserve loadtest: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    for dest, (name, *_) in LOCUSTFILE_SETTINGS.items():
        value = getattr(args, dest)
        if value is not None:
            env[name] = value
    command = locust_command(args, locustfile)
    print("kvserve loadtest: " + shlex.join(command), file=sys.stderr, flush=True)
    code = subprocess.call(command, env=env)
    print(
        f"kvserve loadtest: locust exited {code}; reports: {args.out / 'kvserve_stats.csv'}, "
        f"{args.out / 'report.html'}",
        file=sys.stderr,
    )
    return code
