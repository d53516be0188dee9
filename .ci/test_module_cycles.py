#!/usr/bin/env python3
"""Tests of module-cycles.py on small made-up crates: it must catch what it promises to catch."""

import importlib.util
import os
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("module_cycles", os.path.join(HERE, "module-cycles.py"))
mc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mc)

LAYERS = """
| Layer | Module | Holds | Uses |
|---|---|---|---|
| 0 | `domain` | types | nothing |
| 1 | `store` | store | `domain` |
| 2 | `runtime` | runtime | `domain`, `store` |
| 3 | `cli` | commands | everything |
"""


def crate(files: dict[str, str]) -> str:
    root = tempfile.mkdtemp()
    for path, text in files.items():
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(text))
    return root


def layers() -> dict:
    path = os.path.join(tempfile.mkdtemp(), "arch.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(LAYERS)
    return mc.read_layers(path)


class ModuleCycles(unittest.TestCase):
    def test_a_layered_crate_passes(self):
        src = crate({
            "lib.rs": "pub mod domain; pub mod store; pub mod runtime; pub mod cli;",
            "domain.rs": "pub struct Event;",
            "store/mod.rs": "use crate::domain::Event;\nmod redis;",
            "store/redis.rs": "use super::super::domain::Event; use crate::store::X;",
            "runtime.rs": "use crate::{domain::Event, store::Store};",
            "cli.rs": "fn f() { crate::runtime::run(); crate::domain::now(); }",
        })
        self.assertEqual(mc.check(src, layers()), [])

    def test_a_cycle_is_named_with_its_lines(self):
        src = crate({
            "lib.rs": "pub mod domain; pub mod store; pub mod runtime; pub mod cli;",
            "domain.rs": "",
            "store.rs": "\n\nuse crate::runtime::Event;",
            "runtime.rs": "use crate::store::Store;",
            "cli.rs": "",
        })
        problems = mc.check(src)
        self.assertEqual(len(problems), 1)
        self.assertIn("runtime <-> store", problems[0])
        self.assertIn("store.rs:3", problems[0])

    def test_comments_strings_and_test_modules_resolve_right(self):
        src = crate({
            "lib.rs": "pub mod a; pub mod b;",
            # A path in a comment or a string is not a use; `super` inside an inline module is
            # that module's parent file, not the crate.
            "a.rs": '// crate::b::X\nconst S: &str = "crate::b::X";\nmod tests { use super::*; }',
            "b.rs": "use crate::a::Y;",
        })
        self.assertEqual(mc.check(src), [])

    def test_a_nested_cycle_between_siblings_is_caught(self):
        src = crate({
            "lib.rs": "pub mod store;",
            "store/mod.rs": "mod queue; mod lease;",
            "store/queue.rs": "use super::lease::Lease;",
            "store/lease.rs": "use super::queue::Job;",
        })
        problems = mc.check(src)
        self.assertEqual(len(problems), 1)
        self.assertIn("under crate::store: lease <-> queue", problems[0])

    def test_a_cycle_through_a_parents_re_export_is_caught(self):
        src = crate({
            "lib.rs": "pub mod store;",
            "store/mod.rs": "mod queue; mod lease;\npub use lease::Lease;\npub use self::queue::{Job, Queue as Q};",
            "store/queue.rs": "use crate::store::Lease;",
            "store/lease.rs": "use crate::store::Job;",
        })
        problems = mc.check(src)
        self.assertEqual(len(problems), 1)
        self.assertIn("under crate::store: lease <-> queue", problems[0])

    def test_a_listed_use_of_a_higher_layer_is_still_a_violation(self):
        src = crate({
            "lib.rs": "pub mod domain; pub mod store; pub mod runtime; pub mod cli;",
            "domain.rs": "",
            "store.rs": "",
            "runtime.rs": "",
            "cli.rs": "",
        })
        table = layers()
        table["store"] = (1, {"domain", "runtime"})
        with open(os.path.join(src, "store.rs"), "w", encoding="utf-8") as f:
            f.write("use crate::runtime::Job;")
        problems = mc.check(src, table)
        self.assertEqual(len(problems), 1)
        self.assertIn("runtime is layer 2, not below store's layer 1", problems[0])

    def test_an_edge_the_table_does_not_allow_is_a_layer_violation(self):
        src = crate({
            "lib.rs": "pub mod domain; pub mod store; pub mod runtime; pub mod cli;",
            "domain.rs": "",
            "store.rs": "use crate::cli::Command;",
            "runtime.rs": "",
            "cli.rs": "",
        })
        problems = mc.check(src, layers())
        self.assertEqual(len(problems), 1)
        self.assertIn("layer violation", problems[0])
        self.assertIn("store -> cli", problems[0])

    def test_a_module_missing_from_the_table_is_named(self):
        src = crate({
            "lib.rs": "pub mod domain; pub mod extra;",
            "domain.rs": "",
            "extra.rs": "",
        })
        problems = mc.check(src, layers())
        self.assertTrue(any("module extra" in p and "not in the layer table" in p for p in problems))


if __name__ == "__main__":
    unittest.main()
