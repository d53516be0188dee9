#!/usr/bin/env python3
"""Fails when modules of a crate depend on each other in a circle, or break the documented layers.

Usage: module-cycles.py [--layers <doc.md> <crate src dir>] <crate src dir> [<crate src dir> ...]

For every module, its direct children (files, directories and inline `mod x { .. }` blocks) must
form a graph without cycles, where child A depends on child B when code anywhere under A names a
path under B (`crate::b::..`, `super::b::..`, `use crate::{b::X, ..}`). A child using its parent,
or a parent its children, is not an edge: only siblings are compared. At the top level this is the
rule docs/architecture.md states ("which module may use which"): the crate's modules form layers.

Comments, string and character literals are skipped. Paths are attributed to the longest known
module prefix, so `crate::store::redis::RedisStore` is a use of `store::redis`.

With `--layers doc.md src`, the top-level modules of `src` must also follow the layer table in
`doc.md` (docs/architecture.md): rows `| <layer> | `module` | what it holds | uses |`. A module may
use what its "uses" cell names, or, when the cell says "the layers below" or "everything", any
module of a lower layer. A module missing from the table is an error too, so the table stays the
map of the crate.

Exit status: 0 when all is well, 1 with every problem and the lines that make it otherwise.
"""

from __future__ import annotations

import os
import re
import sys
from collections import defaultdict

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_code(text: str) -> str:
    """Blanks comments and literals (keeping newlines, so line numbers hold)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
            continue
        if text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
            continue
        m = re.match(r'b?r(#*)"', text[i:i + 300])
        if m and (i == 0 or not re.match(r"[A-Za-z0-9_]", text[i - 1])):
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append('""' + re.sub(r"[^\n]", "", text[i:j]))
            i = j
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + re.sub(r"[^\n]", "", text[i:j + 1]))
            i = j + 1
            continue
        if c == "'":
            # A char literal ('a', '\n', '\u{1F600}'), not a lifetime ('a).
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:i + 12])
            if m:
                out.append("' '")
                i += m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


def module_of_file(src: str, path: str) -> tuple[str, ...]:
    rel = os.path.relpath(path, src)[: -len(".rs")].split(os.sep)
    if rel[-1] in ("lib", "main", "mod"):
        rel = rel[:-1]
    return tuple(rel)


def parse_use_tree(text: str, i: int) -> tuple[list[list[str]], int]:
    """Parses the `{ .. }` group of a use tree starting at text[i] == '{'; returns its paths."""
    paths: list[list[str]] = []
    i += 1
    current: list[str] = []
    while i < len(text):
        m = re.match(r"\s*(" + IDENT + r"|\*|\{|\}|,|::|as\s+" + IDENT + r")", text[i:])
        if not m:
            i += 1
            continue
        tok = m.group(1)
        i += m.end()
        if tok == "{":
            inner, i = parse_use_tree(text, i - 1)
            paths.extend(current + p for p in inner)
            current = []
        elif tok == "}":
            if current:
                paths.append(current)
            return paths, i
        elif tok == ",":
            if current:
                paths.append(current)
            current = []
        elif tok == "::" or tok == "*" or tok.startswith("as"):
            continue
        else:
            current.append(tok)
    return paths, i


def references(code: str, module: tuple[str, ...]):
    """Yields (line, referencing module, absolute path) for every crate-relative path."""
    # Inline modules: track `mod name {` nesting by braces.
    stack: list[tuple[str, int]] = []  # (name, brace depth at which it closes)
    depth = 0
    i, n, line = 0, len(code), 1
    token = re.compile(r"\bmod\s+(" + IDENT + r")\s*\{|\b(crate|super|self)((?:\s*::\s*super)*)\s*::\s*|[{}\n]")
    while True:
        m = token.search(code, i)
        if not m:
            return
        line += code.count("\n", i, m.start())
        i = m.end()
        here = module + tuple(name for name, _ in stack)
        text = m.group(0)
        if text == "\n":
            line += 1
            continue
        if text == "{":
            depth += 1
            continue
        if text == "}":
            depth -= 1
            while stack and stack[-1][1] > depth:
                stack.pop()
            continue
        if m.group(1):
            depth += 1
            stack.append((m.group(1), depth))
            continue
        head = m.group(2)
        if head == "crate":
            base: tuple[str, ...] = ()
        elif head == "self":
            base = here
        else:
            ups = 1 + m.group(3).count("super")
            base = here[: max(0, len(here) - ups)]
        if i < n and code[i] == "{":
            tree, _ = parse_use_tree(code, i)
            for p in tree:
                yield line, here, base + tuple(p)
        else:
            pm = re.match(IDENT + r"(\s*::\s*" + IDENT + r")*", code[i:])
            if pm:
                parts = [p.strip() for p in pm.group(0).split("::")]
                yield line, here, base + tuple(parts)


def public_uses(code: str, module: tuple[str, ...]):
    """Yields ((module, exported name), absolute path) for each `pub use` / `pub(crate) use` item."""
    for m in re.finditer(r"\bpub\s*(?:\([^)]*\))?\s*use\s+", code):
        end = code.find(";", m.end())
        if end < 0:
            continue
        text = code[m.end():end]
        tree = text.strip()
        # The head path before a `{ .. }` group, or the whole path.
        brace = tree.find("{")
        if brace >= 0:
            head = [p.strip() for p in tree[:brace].split("::") if p.strip()]
            items, _ = parse_use_tree(tree, brace)
            paths = [head + item for item in items]
        else:
            paths = [[p.strip() for p in re.sub(r"\s+as\s+" + IDENT + r"\s*$", "", tree).split("::")]]
        for path in paths:
            if not path or path[-1] in ("*", "self"):
                continue
            first = path[0]
            if first == "crate":
                absolute = tuple(path[1:])
            elif first == "self":
                absolute = module + tuple(path[1:])
            elif first == "super":
                ups = 0
                while ups < len(path) and path[ups] == "super":
                    ups += 1
                absolute = module[: max(0, len(module) - ups)] + tuple(path[ups:])
            else:
                # A bare first segment is a child module (or another crate, which resolves to
                # nothing known and is ignored).
                absolute = module + tuple(path)
            yield (module, path[-1]), absolute


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def check(src: str, layers: dict | None = None) -> list[str]:
    files = []
    for root, _, names in os.walk(src):
        files += [os.path.join(root, f) for f in names if f.endswith(".rs")]
    modules: set[tuple[str, ...]] = set()
    refs = []
    # (module, name) -> the path a `pub use` in that module re-exports under that name
    reexports: dict[tuple[tuple[str, ...], str], tuple[str, ...]] = {}
    for path in sorted(files):
        module = module_of_file(src, path)
        modules.update(module[:k] for k in range(len(module) + 1))
        with open(path, encoding="utf-8") as f:
            code = strip_code(f.read())
        reexports.update(public_uses(code, module))
        for line, here, target in references(code, module):
            modules.update(here[:k] for k in range(len(here) + 1))
            refs.append((os.path.relpath(path), line, here, target))

    def resolve(target: tuple[str, ...], depth: int = 0) -> tuple[str, ...]:
        for k in range(len(target), -1, -1):
            if target[:k] in modules:
                # `crate::store::Lease` where store re-exports `cursor_lease::Lease` is a use of
                # store::cursor_lease: follow the re-export, or cycles through a parent's
                # `pub use` would be invisible.
                again = reexports.get((target[:k], target[k])) if k < len(target) else None
                if again is not None and depth < 8:
                    return resolve(again + target[k + 1 :], depth + 1)
                return target[:k]
        return ()

    # edges[parent][(a, b)] = example locations, a and b children of parent
    edges: dict[tuple[str, ...], dict[tuple[str, str], list[str]]] = defaultdict(lambda: defaultdict(list))
    for path, line, here, target in refs:
        dest = resolve(target)
        k = 0
        while k < len(here) and k < len(dest) and here[k] == dest[k]:
            k += 1
        if k < len(here) and k < len(dest):
            edges[here[:k]][(here[k], dest[k])].append(f"{path}:{line}")

    problems = []
    if layers is not None:
        problems += check_layers(src, layers, edges.get((), {}), {m[0] for m in modules if m})
    for parent, pairs in sorted(edges.items()):
        graph: dict[str, set[str]] = defaultdict(set)
        for a, b in pairs:
            graph[a].add(b)
        for comp in find_cycles(graph):
            where = "::".join(("crate",) + parent)
            lines = [f"module cycle in {src} under {where}: {' <-> '.join(comp)}"]
            for a, b in sorted(pairs):
                if a in comp and b in comp:
                    locs = pairs[(a, b)]
                    more = f" (+{len(locs) - 3} more)" if len(locs) > 3 else ""
                    lines.append(f"  {a} -> {b}: {', '.join(locs[:3])}{more}")
            problems.append("\n".join(lines))
    return problems


def read_layers(doc: str) -> dict[str, tuple[int, set[str] | None]]:
    """module -> (layer, modules it may use, or None for "any lower layer")."""
    table: dict[str, tuple[int, set[str] | None]] = {}
    with open(doc, encoding="utf-8") as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) < 4 or not cells[0].isdigit():
                continue
            uses_cell = cells[-1]
            if "layers below" in uses_cell or "everything" in uses_cell:
                uses = None
            else:
                uses = set(re.findall(r"`(" + IDENT + r")`", uses_cell))
            for name in re.findall(r"`(" + IDENT + r")`", cells[1]):
                table[name] = (int(cells[0]), uses)
    return table


def check_layers(src, layers, pairs, top_modules) -> list[str]:
    problems = []
    for name in sorted(top_modules - set(layers)):
        problems.append(f"module {name} of {src} is not in the layer table: add it to docs/architecture.md")
    for (a, b), locs in sorted(pairs.items()):
        if a not in layers or b not in layers:
            continue
        (layer_a, uses), (layer_b, _) = layers[a], layers[b]
        allowed = layer_b < layer_a and (uses is None or b in uses)
        if not allowed:
            why = (
                f"{b} is layer {layer_b}, not below {a}'s layer {layer_a}"
                if layer_b >= layer_a
                else f"the table says {a} uses only: {', '.join(sorted(uses or ())) or 'nothing'}"
            )
            more = f" (+{len(locs) - 3} more)" if len(locs) > 3 else ""
            problems.append(f"layer violation in {src}: {a} -> {b} ({why}): {', '.join(locs[:3])}{more}")
    return problems


def main() -> int:
    args = sys.argv[1:]
    jobs: list[tuple[str, dict | None]] = []
    while args:
        if args[0] == "--layers" and len(args) >= 3:
            jobs.append((args[2], read_layers(args[1])))
            args = args[3:]
        else:
            jobs.append((args[0], None))
            args = args[1:]
    if not jobs:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    problems = []
    for src, layers in jobs:
        problems += check(src, layers)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(
            "error: modules must form layers (docs/architecture.md, 'The host's modules'); "
            "move the shared items down a layer instead of importing upwards",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
