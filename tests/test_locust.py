"""The Locust load test: `kvserve loadtest` runs every user class of clients/locustfile.py
against a live server without a failure and reports TTFT and inter-token latency.

Locust monkeypatches the standard library with gevent when imported, so it never runs in
this process: the load test runs through `kvserve loadtest` (a child process), and the
locustfile's settings parsers are checked by importing it in a child Python.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from server.cli import main
from server.loadtest_command import USER_CLASSES, locustfile_path
from tests.live_server import live_server

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "clients" / "locustfile.py"
KVSERVE = str(Path(sys.executable).with_name("kvserve"))
STREAM_KINDS = ("generate", "speculative", "session")  # native streams: TTFT, ITL, tokens/s

# Run in a child Python: load the locustfile by path, exercise its pure functions, print
# the results as JSON.
_PROBE = textwrap.dedent(
    """
    import importlib.util, json, random, sys
    spec = importlib.util.spec_from_file_location("locustfile", sys.argv[1])
    lf = sys.modules["locustfile"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lf)
    rng = random.Random(0)

    def draws(text, n=4000, floats=False):
        d = lf.parse_distribution(text, floats=floats, name="KVSERVE_X")
        return {"kind": d.kind, "values": [d.draw(rng) for _ in range(n)]}

    def error(call, *args, **kw):
        try:
            call(*args, **kw)
        except ValueError as exc:
            return str(exc)
        return None

    def events(chunks):
        parser = lf.SseParser()
        return [e for chunk in chunks for e in parser.feed(chunk.encode())]

    bad = ["", "0", "64:8", "a:b", "1:2:3", "-1:4", "1.5", "lognormal:1:2", "lognormal:0:1:9"]
    print(json.dumps({
        "fixed": draws("32"),
        "uniform": draws("8:64"),
        "lognormal": draws("lognormal:100:0.5:100000", n=20000),
        "lognormal_cut": draws("lognormal:100:2:150"),
        "wait": draws("0:0.5", floats=True),
        "wait_fixed": draws("0.25", floats=True, n=3),
        "errors": {text: error(lf.parse_distribution, text, name="KVSERVE_X") for text in bad},
        "float_errors": [error(lf.parse_distribution, t, floats=True) for t in ["nan", "-1"]],
        "mix": lf.parse_mix("generate=3, session=1"),
        "mix_errors": [error(lf.parse_mix, t) for t in ["bogus=1", "generate=0", "generate"]],
        "fit": [lf.fit(100, 50, 512), lf.fit(400, 200, 300), lf.fit(5, 5, 2)],
        "sse": events(["event: tok", "en\\r\\ndata: {\\"index\\": 0}\\r\\n\\r", "\\n: ping\\n\\n",
                       "data: [DONE]\\n\\nevent: done\\ndata: a\\ndata: b\\n\\n"]),
        "user_classes": sorted(n for n, v in vars(lf).items() if isinstance(v, type)
                               and issubclass(v, lf.HttpUser) and not v.abstract),
    }))
    """
)


@pytest.fixture(scope="module")
def probe() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(LOCUSTFILE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_fixed_and_uniform_distributions(probe: dict[str, Any]) -> None:
    assert probe["fixed"]["kind"] == "fixed" and set(probe["fixed"]["values"]) == {32}
    uniform = probe["uniform"]["values"]
    assert probe["uniform"]["kind"] == "uniform"
    assert all(isinstance(v, int) for v in uniform)
    assert min(uniform) == 8 and max(uniform) == 64  # both ends included
    wait = probe["wait"]["values"]
    assert all(0 <= v <= 0.5 for v in wait) and max(wait) - min(wait) > 0.4
    assert probe["wait_fixed"]["values"] == [0.25] * 3


def test_lognormal_has_the_given_mean_and_is_cut_to_its_max(probe: dict[str, Any]) -> None:
    values = probe["lognormal"]["values"]
    assert all(isinstance(v, int) and v >= 1 for v in values)
    assert abs(sum(values) / len(values) - 100) < 4  # standard error ~0.4
    cut = probe["lognormal_cut"]["values"]
    assert max(cut) == 150 and min(cut) >= 1


def test_bad_settings_are_errors_naming_the_variable(probe: dict[str, Any]) -> None:
    for text, message in probe["errors"].items():
        assert message is not None, f"{text!r} was accepted"
        assert "KVSERVE_X" in message and "lognormal:MEAN:SIGMA:MAX" in message
    assert all(probe["float_errors"])
    assert probe["mix"] == {
        "generate": 3,
        "predict": 0,
        "session": 1,
        "speculative": 0,
        "completions": 0,
    }
    assert all(m and "KVSERVE_MIX" in m for m in probe["mix_errors"])


def test_lengths_are_cut_to_fit_max_seq_len(probe: dict[str, Any]) -> None:
    unchanged, cut, tiny = probe["fit"]
    assert unchanged == [100, 50]
    assert sum(cut) <= 300 and min(cut) >= 1 and cut[1] < 200
    assert tiny == [1, 1]


def test_sse_parser_handles_split_chunks_crlf_and_comments(probe: dict[str, Any]) -> None:
    assert probe["sse"] == [["token", '{"index": 0}'], [None, "[DONE]"], ["done", "a\nb"]]


def test_cli_knows_every_user_class_of_the_locustfile(probe: dict[str, Any]) -> None:
    assert probe["user_classes"] == sorted(USER_CLASSES)
    assert locustfile_path() == LOCUSTFILE


def test_unknown_user_class_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["loadtest", "--user-classes", "PredictUser,NoSuchUser"]) == 2
    err = capsys.readouterr().err
    assert "NoSuchUser" in err and "StreamingGenerateUser" in err


def _loadtest(url: str, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    command = [KVSERVE, "loadtest", "--host", url, "--out", str(out), *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _stats(out: Path) -> dict[str, dict[str, str]]:
    with (out / "kvserve_stats.csv").open() as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def test_every_user_class_runs_20_s_without_failures(tmp_path: Path) -> None:
    started = time.monotonic()
    with live_server(models=["text-lm", "text-lm-draft", "sine-regressor"]) as server:
        run = _loadtest(
            server.url,
            tmp_path / "all",
            *("--users", str(len(USER_CLASSES))),  # one per class
            *("--run-time", "20s", "--user-classes", ",".join(USER_CLASSES)),
            *("--prompt-tokens", "8:64", "--new-tokens", "8:32"),
        )
        # And a failing request is seen as one: Locust exits 1.
        failing = _loadtest(
            server.url,
            tmp_path / "failing",
            *("--users", "1", "--run-time", "3s", "--user-classes", "StreamingGenerateUser"),
            *("--model", "no-such-model"),
        )
        server_log = server.log()
    report = f"{run.stdout}\n{run.stderr[-6000:]}\nserver:\n{server_log[-3000:]}"
    assert run.returncode == 0, report

    rows = _stats(tmp_path / "all")
    expected = {
        "generate (stream)",
        "speculative (stream)",
        "session open",
        "session turn (stream)",
        "session close",
        "predict",
        "completions (stream)",
        "completions TTFT",
        "completions tokens/s (value in response_time)",
        "Aggregated",
    }
    for kind in STREAM_KINDS:
        expected |= {f"{kind} TTFT", f"{kind} ITL", f"{kind} tokens/s (value in response_time)"}
    assert expected <= set(rows), report
    for name, row in rows.items():
        assert row["Failure Count"] == "0", (name, row)
    for name in expected:
        assert int(rows[name]["Request Count"]) > 0, (name, rows[name])
    for kind in STREAM_KINDS:
        assert rows[f"{kind} TTFT"]["Type"] == "SSE"
    assert (tmp_path / "all" / "report.html").stat().st_size > 10_000

    assert failing.returncode == 1, failing.stderr[-3000:]
    failed = _stats(tmp_path / "failing")
    assert int(failed["model card"]["Failure Count"]) > 0
    assert int(failed["generate (stream)"]["Failure Count"]) > 0
    print(f"live load test: {time.monotonic() - started:.1f} s in all")
