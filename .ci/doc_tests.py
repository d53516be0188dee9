#!/usr/bin/env python3
"""Every test a promise page names exists.

docs/guarantees.md and docs/bad-input.md map each promise to the test that proves it. This check
(run by `make lint`) fails when a named test is missing: renamed, deleted or mistyped. That the
tests pass is `make test`'s job; none of them may be #[ignore]d.

Names understood (in backticks):
  <module>::<fn>                      host/tests/integration/<module>.rs
  <module>::*                         that file exists
  store::{redis,embedded}::<fn>       the store conformance suite (host/tests/integration/store.rs)
  fulfilld::<path>::tests::<fn>       a unit test in host/src/<path>.rs or host/src/<path>/mod.rs
  rules::<fn>                         components/fulfillment/tests/rules.rs
  tests/scenarios/<file>.toml         a shipped scenario
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["docs/guarantees.md", "docs/bad-input.md"]
NAME = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*(?:::(?:\{[a-z,]+\}|[A-Za-z0-9_*]+))+|tests/scenarios/[A-Za-z0-9_.-]+\.toml)`")


def has_fn(path: Path, name: str) -> bool:
    if not path.is_file():
        return False
    text = path.read_text()
    match = re.search(rf"(?:^|\n)([^\n]*)\n\s*(?:pub(?:\(crate\))? )?(?:async )?fn {re.escape(name)}\s*[(<]", text)
    if match is None:
        # A conformance case listed in a macro invocation.
        return re.search(rf"\b{re.escape(name)}\b", text) is not None and f"fn {name}" in text
    return "#[ignore" not in match.group(1)


def unit_file(path: list[str]) -> list[Path]:
    base = ROOT / "host/src" / Path(*path)
    return [base.with_suffix(".rs"), base / "mod.rs"]


def check(name: str) -> str | None:
    """None when `name` is found, else what is missing."""
    if name.startswith("tests/scenarios/"):
        return None if (ROOT / name).is_file() else "no such scenario file"
    parts = name.split("::")
    if parts[0] == "fulfilld":
        if len(parts) < 4 or parts[-2] != "tests":
            return None  # a module or target name (`fulfilld::gate`), not a test
        files = unit_file(parts[1:-2])
        return None if any(has_fn(f, parts[-1]) for f in files) else "no such unit test"
    if parts[0] == "rules":
        return None if has_fn(ROOT / "components/fulfillment/tests/rules.rs", parts[-1]) else "no such rules test"
    module = ROOT / "host/tests/integration" / f"{parts[0]}.rs"
    if not module.is_file():
        return None if parts[0] not in integration_modules() else "no such test module"
    if parts[-1] == "*":
        return None
    return None if has_fn(module, parts[-1]) else "no such test"


def integration_modules() -> set[str]:
    return {p.stem for p in (ROOT / "host/tests/integration").glob("*.rs")}


def main() -> int:
    modules = integration_modules()
    missing = []
    count = 0
    for page in PAGES:
        for lineno, line in enumerate((ROOT / page).read_text().splitlines(), 1):
            for name in NAME.findall(line):
                head = name.split("::")[0]
                if not (name.startswith("tests/") or head in modules or head in ("fulfilld", "rules")):
                    continue  # a Rust path in prose (`fulfilld::testkit`), not a test name
                count += 1
                problem = check(name)
                if problem:
                    missing.append(f"{page}:{lineno}: `{name}`: {problem}")
    for line in missing:
        print(line, file=sys.stderr)
    if missing:
        print(f"{len(missing)} of {count} test names in {', '.join(PAGES)} do not exist", file=sys.stderr)
        return 1
    if "-q" not in sys.argv:
        print(f"{count} test names in {', '.join(PAGES)}: all exist")
    return 0


if __name__ == "__main__":
    sys.exit(main())
