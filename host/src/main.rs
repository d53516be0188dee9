//! `fulfilld`: parses arguments, sets up logging, and calls the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "fulfilld",
    version,
    about = "Runs order-provisioning rules as a sandboxed WebAssembly component"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a component's scenario files against the mocked host (the test kit).
    Test {
        /// The component `.wasm` file.
        component: PathBuf,
        /// Scenario files, or directories of `*.toml` scenarios.
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        /// Also print each run's result, call sequence and logs.
        #[arg(short, long)]
        verbose: bool,
        /// Capability policy file to run under (default: the built-in policy), so scenarios
        /// exercise the policy production uses.
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Work with component files.
    Component {
        #[command(subcommand)]
        command: ComponentCommand,
    },
    /// Provision one Order now against the configured Salesforce org and WHMCS.
    Fulfill {
        /// The Salesforce Order Id.
        #[arg(long)]
        order_id: String,
        /// The component `.wasm` (default: FULFILLD_COMPONENT).
        #[arg(long)]
        component: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ComponentCommand {
    /// Check that a `.wasm` file is a component this host can run, and say what is wrong if not.
    Check { file: PathBuf },
}

/// `FULFILLD_LOG` (or `RUST_LOG`) overrides `default` with the usual filter syntax.
fn init_tracing(default: &str) {
    let filter = EnvFilter::try_from_env("FULFILLD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("FULFILLD_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(command: Command) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Test {
            component,
            scenarios,
            verbose,
            policy,
        } => {
            fulfilld::cli::test(&component, &scenarios, policy.as_deref(), verbose, &mut out).await
        }
        Command::Component {
            command: ComponentCommand::Check { file },
        } => fulfilld::cli::component_check(&file, &mut out).await,
        Command::Fulfill {
            order_id,
            component,
        } => {
            let config = fulfilld::config::Config::from_env()?;
            let component = component
                .or_else(|| config.component.clone())
                .ok_or_else(|| {
                    anyhow::anyhow!("no component: pass --component or set FULFILLD_COMPONENT")
                })?;
            fulfilld::cli::fulfill_once(&config, &component, &order_id, &mut out).await
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The test kit reports on stdout and keeps each run's component logs in its journal
    // (`--verbose` prints them), so by default only warnings reach stderr there.
    init_tracing(match cli.command {
        Command::Test { .. } => "warn,component=off",
        _ => "warn,fulfilld=info,component=info",
    });
    match run(cli.command).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "fulfilld: {error:#}");
            ExitCode::from(2)
        }
    }
}
