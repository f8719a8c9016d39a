#!/usr/bin/env bash
# Audit the installed dependency set for known vulnerabilities with pip-audit, from the
# repository root:
#   bash benchmarks/audit_dependencies.sh [PYTHON]      (default: .venv/bin/python)
# Audits the environment of PYTHON (the project itself, installed editable, is left out)
# against PyPI's vulnerability data, and against OSV when PyPI could audit nothing.
# Prints every vulnerable package with its advisories and fixed versions, then one line:
#   audited N of M packages (service): V vulnerable, S skipped
# Exit status: 0 nothing known-vulnerable, 1 vulnerabilities found, 2 the audit could not
# run (no vulnerability service answered for the installed versions: the reason is
# printed; note it where the result is reported).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

audited_any() {  # whether pip-audit's JSON report $1 audited at least one package
    "$PYTHON" -c '
import json, sys
try:
    deps = json.load(open(sys.argv[1]))["dependencies"]
except (OSError, ValueError, KeyError):
    sys.exit(1)
sys.exit(0 if any("skip_reason" not in d for d in deps) else 1)
' "$1"
}

for service in pypi osv; do
    "$PYTHON" -m pip_audit --progress-spinner off --skip-editable --desc off \
        --vulnerability-service "$service" --format json --output "$work/$service.json" \
        2>"$work/$service.err"
    echo $? >"$work/$service.rc"
    audited_any "$work/$service.json" && break
done

"$PYTHON" - "$work" <<'PY'
import collections
import json
import sys
from pathlib import Path

work = Path(sys.argv[1])


def last_line(path: Path) -> str:
    lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    return lines[-1] if lines else "(no message)"


def why_not() -> None:
    for tried in ("pypi", "osv"):
        if (work / f"{tried}.err").exists():
            rc = (work / f"{tried}.rc").read_text().strip()
            print(f"  {tried}: pip-audit exit {rc}; {last_line(work / f'{tried}.err')}")


runs = {}
for service in ("pypi", "osv"):
    try:
        runs[service] = json.loads((work / f"{service}.json").read_text())["dependencies"]
    except (OSError, ValueError, KeyError):
        continue
if not runs:
    print("pip-audit did not run:")
    why_not()
    sys.exit(2)
# The service that audited something, else the first that answered at all.
service = next(
    (s for s, deps in runs.items() if any("skip_reason" not in d for d in deps)), next(iter(runs))
)
deps = runs[service]
audited = [d for d in deps if "skip_reason" not in d]
skipped = [d for d in deps if "skip_reason" in d]
vulnerable = [d for d in audited if d.get("vulns")]
for dep in vulnerable:
    print(f"{dep['name']} {dep['version']}:")
    for vuln in dep["vulns"]:
        fixed = ", ".join(vuln.get("fix_versions") or []) or "no fixed version"
        aliases = ", ".join(vuln.get("aliases") or []) or "-"
        print(f"  {vuln['id']} ({aliases}): fixed in {fixed}")
print(
    f"audited {len(audited)} of {len(deps)} packages ({service}): {len(vulnerable)} "
    f"vulnerable, {len(skipped)} skipped"
)
reasons = collections.Counter(d["skip_reason"].split(":")[0] for d in skipped)
for reason, count in reasons.most_common():
    print(f"  skipped {count}: {reason}")
if not audited:
    print("the audit could not run: no vulnerability service answered for these versions")
    why_not()
    # What PyPI says to the per-version query pip-audit makes, for one of the packages.
    import urllib.error
    import urllib.request

    import re

    # A skipped package's version is only in its reason: "... could not be audited: x (1.0)".
    versions = [(d["name"], re.search(r"\(([^()]+)\)$", d["skip_reason"])) for d in skipped]
    probe = next(((name, found[1]) for name, found in versions if found), None)
    if probe is not None:
        url = f"https://pypi.org/pypi/{probe[0]}/{probe[1]}/json"
        try:
            with urllib.request.urlopen(url, timeout=20) as answer:
                said = f"HTTP {answer.status}"
        except urllib.error.HTTPError as exc:
            said = f"HTTP {exc.code}"
        except OSError as exc:
            said = f"no answer ({exc})"
        print(f"  probe: {url} -> {said}")
    sys.exit(2)
sys.exit(1 if vulnerable else 0)
PY
