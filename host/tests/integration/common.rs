//! Helpers shared by the integration tests.

use std::path::PathBuf;

/// Path of a built component (`make components` builds them all).
pub fn component(crate_name: &str) -> PathBuf {
    let dir = std::env::var_os("FULFILLD_COMPONENT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/wasm32-wasip2/component"
            ))
        });
    let path = dir.join(format!("{}.wasm", crate_name.replace('-', "_")));
    assert!(
        path.is_file(),
        "{} is missing: run `make components` first",
        path.display()
    );
    path
}

/// The shipped scenario directory.
pub fn scenarios_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/scenarios"))
}

pub fn keys_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/keys"))
}

/// Captures everything `tracing` writes on this thread while the guard lives.
#[derive(Clone, Default)]
pub struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogCapture {
    /// Installs a TRACE-level subscriber for this thread; keep the guard alive.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(self.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Runs the built `fulfilld` with `args`, as a user would.
pub fn fulfilld(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_fulfilld"))
        .args(args)
        .output()
        .unwrap()
}

/// What a command printed: stdout, then stderr.
pub fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A deploy gate's log text (a rehearsal) has no line an alert would take for a job: no ERROR or
/// WARN, no `job` span, nothing under the components' job target.
pub fn assert_no_job_lines(text: &str) {
    for line in text.lines() {
        assert!(
            !line.contains(" ERROR ") && !line.contains(" WARN "),
            "a gate run logged at ERROR/WARN: {line}"
        );
        assert!(
            !line.contains("job{"),
            "a gate run logged in a job span: {line}"
        );
        assert!(
            !line.contains(" component: "),
            "a gate run logged under the job target: {line}"
        );
    }
}

/// The first `n` words of `text` (to find a message that a report may cut or wrap).
pub fn first_words(text: &str, n: usize) -> String {
    text.split_whitespace()
        .take(n)
        .collect::<Vec<_>>()
        .join(" ")
}
