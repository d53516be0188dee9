//! What the machine was doing while a bench ran. Every bench prints these lines first and last,
//! so a recorded run (`make bench` keeps it in `target/bench/`) carries the build, the component
//! and the load beside its figures; docs/benchmarks.md quotes them.

use std::path::Path;
use std::process::Command;

fn run(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// `# machine:` lines: the bench, the time, the commit, the compiler and profile, the CPUs and
/// memory, the load average (1, 5, 15 min) and the component's size.
pub fn print_start(bench: &str, component: Option<&Path>) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let commit = run("git", &["-C", root, "rev-parse", "--short=12", "HEAD"]);
    let dirty = run(
        "git",
        &["-C", root, "status", "--porcelain", "--untracked-files=no"],
    );
    let dirty = if dirty.is_empty() || dirty == "unknown" {
        ""
    } else {
        " (with uncommitted changes)"
    };
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release (bench profile)"
    };
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        })
        .unwrap_or_else(|| "unknown".into());
    println!(
        "# machine: bench {bench}, {}",
        run("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
    );
    println!(
        "# machine: commit {commit}{dirty}, {}, {profile}",
        run("rustc", &["-V"])
    );
    println!(
        "# machine: {cpus} CPUs, {memory} memory, load average {}",
        loadavg()
    );
    if let Some(path) = component {
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        println!("# machine: component {} ({size} bytes)", path.display());
    }
}

/// The load average once the bench is done.
pub fn print_end(bench: &str) {
    println!(
        "# machine: bench {bench} done, {}, load average {}",
        run("date", &["-u", "+%H:%M:%SZ"]),
        loadavg()
    );
}
