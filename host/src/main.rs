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
        /// A Salesforce package (SFDX project or package directory) whose objects and fields the
        /// fake org has, instead of the shipped `salesforce/` package; repeatable.
        #[arg(long = "salesforce-package", value_name = "DIR")]
        salesforce_packages: Vec<PathBuf>,
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
    /// Run a stand-in for Salesforce (Pub/Sub API, OAuth, REST) and WHMCS, with an admin API to
    /// seed data, publish events and inject faults (docs/sandbox.md).
    Sandbox(SandboxArgs),
    /// Run the host: subscribe to the channel (one leader across replicas), enqueue, and run the
    /// component on every job; `/health` and `/metrics` on FULFILLD_HTTP_ADDR.
    Serve,
    /// Show or move the channel's replay cursor (`sf:pe:replay:<channel>`).
    Cursor {
        #[command(subcommand)]
        command: CursorCommand,
        /// Write even while a replica holds the channel's lease (it may undo the change).
        #[arg(long, global = true)]
        force: bool,
    },
    /// List, show and requeue dead letters.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
    /// Where an Order is and why: its jobs and their journals (from the store `serve` uses).
    Orders {
        #[command(subcommand)]
        command: OrdersCommand,
    },
    /// Jobs by state: queued, running, failed or dead.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Print a shell completion script: `fulfilld completions bash > /etc/bash_completion.d/fulfilld`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Preflight with the production settings: the JWT grant, the org's schema for the
    /// component, the event topic, WHMCS credentials, version and products, the store, the
    /// component. PASS or FAIL with the fix per check; exit status 1 when any fails.
    Doctor {
        /// The component `.wasm` (default: FULFILLD_COMPONENT).
        #[arg(long)]
        component: Option<PathBuf>,
    },
    /// The whole pipeline on this machine: the sandbox, `serve` on the embedded store, a few
    /// orders (one without a payment method, one duplicate event) and their status as it changes.
    Demo {
        /// The component `.wasm`.
        #[arg(long)]
        component: PathBuf,
        /// Where the demo keeps its store and the sandbox's files (wiped at start).
        #[arg(long, default_value = "target/demo")]
        state_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum CursorCommand {
    /// Print the stored cursor, a pending backfill and the current leader.
    Show,
    /// Store a replay id (decimal); the next subscription resumes strictly after it.
    Reset { replay_id: String },
    /// Remove the cursor: the next subscription starts per SF_EVENTS_REPLAY.
    Clear,
    /// Subscribe from EARLIEST once (a one-time backfill); duplicates are recognised by EventUuid.
    Backfill,
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// Oldest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One dead letter with its payload (JSON event, or the raw bytes of an undecodable one).
    Show { id: String },
    /// Put a dead-lettered job back on the queue.
    Requeue { id: String },
}

#[derive(Subcommand)]
enum OrdersCommand {
    /// Every job of an Order (by Order Id, 15 or 18 characters) or of one EventUuid, newest
    /// first, each with its journal: enqueued, claimed, each host call, how it ended.
    Show {
        /// A Salesforce Order Id or an EventUuid.
        id: String,
        /// Print JSON (the admin API's `GET /admin/orders/<id>`).
        #[arg(long)]
        json: bool,
    },
    /// Write the last run of an Order's newest job (or of `--event-uuid`'s) as a scenario file:
    /// seeded from the answers it got, failures injected, its outcome and calls expected, so
    /// `fulfilld test` replays it against any component version. Needs the run to have been
    /// journaled with FULFILLD_JOURNAL_CAPTURE on.
    Export {
        /// A Salesforce Order Id or an EventUuid.
        id: String,
        /// The scenario file to write.
        #[arg(long)]
        scenario: PathBuf,
        /// Which of the Order's jobs (default: the newest).
        #[arg(long)]
        event_uuid: Option<String>,
        /// What the scenario expects: `completed` (the Order provisioned; the default for a
        /// failed job: the scenario fails until a version handles it) or `recorded` (the result,
        /// code and calls of the run; the default otherwise).
        #[arg(long, value_parser = ["completed", "recorded"])]
        expect: Option<String>,
        /// Replace the scenario file if it exists.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Jobs in one state: queued and running oldest first, failed and dead newest first.
    List {
        #[arg(long, value_parser = ["queued", "running", "failed", "dead"])]
        state: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON (the admin API's `GET /admin/jobs`).
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct SandboxArgs {
    /// Address every part listens on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// Admin API port (seed, publish, faults).
    #[arg(long, default_value_t = 8480)]
    admin_port: u16,
    /// Fake Salesforce port: OAuth token endpoint, userinfo and REST (SF_LOGIN_URL).
    #[arg(long, default_value_t = 8481)]
    salesforce_port: u16,
    /// Fake WHMCS API port (WHMCS_URL).
    #[arg(long, default_value_t = 8482)]
    whmcs_port: u16,
    /// Pub/Sub API port (SF_PUBSUB_ENDPOINT).
    #[arg(long, default_value_t = 8483)]
    pubsub_port: u16,
    /// Serve the Pub/Sub API and the fake org (token endpoint, REST) over TLS with a generated
    /// test CA (written to the state directory as sandbox-ca.pem).
    #[arg(long)]
    tls: bool,
    /// Seconds between keepalives on an idle stream (Salesforce: 270).
    #[arg(long, default_value_t = 270)]
    keepalive_secs: u64,
    /// Event retention in seconds (Salesforce: 72 h).
    #[arg(long, default_value_t = 72 * 3600)]
    retention_secs: u64,
    /// Where the JWT private key, `sandbox.env` and the CA are written.
    #[arg(long, default_value = "target/sandbox")]
    state_dir: PathBuf,
    /// Seed file (the scenario seed format); default: the shipped demo seed.
    #[arg(long, conflicts_with = "empty")]
    seed: Option<PathBuf>,
    /// Start with an empty org and WHMCS.
    #[arg(long)]
    empty: bool,
    /// A Salesforce package (an SFDX project or package directory) whose objects and fields the
    /// fake org has, instead of the shipped `salesforce/` package; repeat to load several (pass
    /// the shipped one too to extend it). The standard objects are always there.
    #[arg(long = "salesforce-package", value_name = "DIR")]
    salesforce_packages: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum ComponentCommand {
    /// Write a new component crate, `<dir>/<name>`: the default rules through their extension
    /// points, the SDK and the rules vendored, a manifest, scenarios and a README.
    New {
        /// Lowercase letters, digits and `-` (1 to 64), starting with a letter.
        name: String,
        /// The folder to create it in (default: the current folder).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Check that a `.wasm` file is a component this host can run, and say what is wrong if not
    /// (its manifest included, against the default capability policy or `--policy`).
    Check {
        file: PathBuf,
        /// The host's capability policy file (TOML), the ceiling a manifest must stay within.
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Embed a component manifest (`component.toml`) into a `.wasm`, replacing any it carries;
    /// sign after packing: the signature covers the manifest.
    Pack {
        file: PathBuf,
        #[arg(long)]
        manifest: PathBuf,
        /// Where to write the packed component (default: in place).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Upload a component to a running host (FULFILLD_ADMIN_URL, FULFILLD_ADMIN_TOKEN); it goes
    /// through the deploy gates first.
    Deploy {
        file: PathBuf,
        /// Make it live right away (new jobs run on it; jobs in flight finish on theirs).
        #[arg(long)]
        activate: bool,
        /// Who deploys (recorded with the version; default: $USER).
        #[arg(long)]
        deployed_by: Option<String>,
        /// The component's signature (base64 ed25519, as `component sign` writes it).
        /// Default: `<file>.sig` when that file exists.
        #[arg(long)]
        signature: Option<PathBuf>,
        /// The component's own scenario suite (a directory of scenario files, seeds included);
        /// the host runs it against the candidate before accepting it.
        #[arg(long)]
        scenarios: Option<PathBuf>,
    },
    /// Sign a component with an ed25519 private key (PEM, `openssl genpkey -algorithm ed25519`);
    /// writes the base64 signature to `<file>.sig` (or `--out`).
    Sign {
        file: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The deployed versions, the active one and the rollback history.
    List,
    /// One deployed version.
    Show { sha256: String },
    /// Make a deployed version live.
    Activate { sha256: String },
    /// Go back to the previously active version.
    Rollback,
}

/// Logging for a command: `FULFILLD_LOG` (or `RUST_LOG`) overrides `default` with the usual filter
/// syntax; `FULFILLD_LOG_FORMAT=json` writes JSON lines. Colour codes only when stderr is a
/// terminal. With `file` (the demo), the `default` lines go to that file, without colour, and
/// stderr gets only warnings unless `FULFILLD_LOG` asks for more there. With `traces` (the
/// `OTEL_*` settings), spans are also exported, under a filter of their own (`telemetry`); the
/// returned export is flushed when the command ends.
fn init_tracing(
    default: &str,
    file: Option<&std::path::Path>,
    traces: Option<&fulfilld::telemetry::TraceSettings>,
) -> anyhow::Result<Option<fulfilld::telemetry::TraceExport>> {
    use std::io::IsTerminal as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    type Boxed = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;
    let from_env = || {
        EnvFilter::try_from_env("FULFILLD_LOG")
            .or_else(|_| EnvFilter::try_from_default_env())
            .ok()
    };
    let json = std::env::var("FULFILLD_LOG_FORMAT").is_ok_and(|f| f == "json");
    let layer = |writer: tracing_subscriber::fmt::writer::BoxMakeWriter,
                 ansi: bool,
                 filter: EnvFilter|
     -> Boxed {
        let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
        if json {
            fmt.json().with_filter(filter).boxed()
        } else {
            fmt.with_ansi(ansi).with_filter(filter).boxed()
        }
    };
    let stderr = || tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr);
    let ansi = std::io::stderr().is_terminal();
    let mut layers: Vec<Boxed> = match file {
        None => vec![layer(
            stderr(),
            ansi,
            from_env().unwrap_or_else(|| EnvFilter::new(default)),
        )],
        Some(path) => {
            let file = std::fs::File::create(path).map_err(|e| {
                anyhow::anyhow!("cannot write the log file {}: {e}", path.display())
            })?;
            vec![
                layer(
                    tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::sync::Mutex::new(
                        file,
                    )),
                    false,
                    from_env().unwrap_or_else(|| EnvFilter::new(default)),
                ),
                layer(
                    stderr(),
                    ansi,
                    from_env().unwrap_or_else(|| EnvFilter::new("warn")),
                ),
            ]
        }
    };
    let export = match traces {
        Some(settings) => {
            let (layer, export) = fulfilld::telemetry::start(settings)?;
            layers.push(layer);
            Some(export)
        }
        None => None,
    };
    tracing_subscriber::registry().with(layers).init();
    if let Some(settings) = traces {
        tracing::info!(
            endpoint = %settings.endpoint,
            protocol = ?settings.protocol,
            "exporting traces (OpenTelemetry)"
        );
    }
    Ok(export)
}

/// Where `fulfilld demo` writes the pipeline's log: beside its state directory (which it clears
/// at start), `target/demo.log` by default.
fn demo_log_path(state_dir: &std::path::Path) -> PathBuf {
    match state_dir.file_name() {
        Some(name) => {
            let mut name = name.to_os_string();
            name.push(".log");
            state_dir.with_file_name(name)
        }
        None => PathBuf::from("fulfilld-demo.log"),
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
            salesforce_packages,
        } => {
            fulfilld::cli::test(
                &component,
                &scenarios,
                policy.as_deref(),
                &salesforce_packages,
                verbose,
                &mut out,
            )
            .await
        }
        Command::Component { command } => {
            use fulfilld::cli::AdminAction;
            // Read only by the admin commands below: `check` and `sign` need no settings.
            let settings = fulfilld::config::AdminClientConfig::from_env;
            let action = match command {
                ComponentCommand::New { name, dir } => {
                    return fulfilld::cli::component_new(&name, &dir, &mut out);
                }
                ComponentCommand::Check { file, policy } => {
                    return fulfilld::cli::component_check(&file, policy.as_deref(), &mut out)
                        .await;
                }
                ComponentCommand::Pack {
                    file,
                    manifest,
                    out: to,
                } => {
                    return fulfilld::cli::component_pack(
                        &file,
                        &manifest,
                        to.as_deref(),
                        &mut out,
                    );
                }
                ComponentCommand::Sign { file, key, out: to } => {
                    return fulfilld::cli::component_sign(&file, &key, to.as_deref(), &mut out);
                }
                ComponentCommand::Deploy {
                    file,
                    activate,
                    deployed_by,
                    signature,
                    scenarios,
                } => AdminAction::Deploy {
                    file,
                    activate,
                    deployed_by: match deployed_by {
                        Some(who) => who,
                        None => settings()?.user,
                    },
                    signature,
                    scenarios,
                },
                ComponentCommand::List => AdminAction::List,
                ComponentCommand::Show { sha256 } => AdminAction::Show { sha256 },
                ComponentCommand::Activate { sha256 } => AdminAction::Activate { sha256 },
                ComponentCommand::Rollback => AdminAction::Rollback,
            };
            let admin = settings()?;
            fulfilld::cli::admin(&admin.url, admin.token.expose(), action, &mut out).await
        }
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
        Command::Sandbox(args) => {
            drop(out);
            sandbox(args).await.map(|()| true)
        }
        Command::Serve => {
            drop(out);
            let config = fulfilld::config::Config::from_env()?;
            let host = fulfilld::pipeline::Host::from_config(&config).await?;
            shutdown_signal().await;
            host.shutdown().await;
            Ok(true)
        }
        Command::Cursor { command, force } => {
            let action = match command {
                CursorCommand::Show => fulfilld::cli::CursorAction::Show,
                CursorCommand::Reset { replay_id } => fulfilld::cli::CursorAction::Reset(
                    fulfilld::domain::ReplayId::parse(&replay_id)?,
                ),
                CursorCommand::Clear => fulfilld::cli::CursorAction::Clear,
                CursorCommand::Backfill => fulfilld::cli::CursorAction::Backfill,
            };
            let (store, config) = operator_store().await?;
            fulfilld::cli::cursor(store.as_ref(), &config.channel, action, force, &mut out).await
        }
        Command::DeadLetters { command } => {
            let action = match command {
                DeadLetterCommand::List { limit } => {
                    fulfilld::cli::DeadLetterAction::List { limit }
                }
                DeadLetterCommand::Show { id } => fulfilld::cli::DeadLetterAction::Show { id },
                DeadLetterCommand::Requeue { id } => {
                    fulfilld::cli::DeadLetterAction::Requeue { id }
                }
            };
            let (store, config) = operator_store().await?;
            fulfilld::cli::dead_letters(
                store.as_ref(),
                &config.channel,
                action,
                config.journal_retention,
                &mut out,
            )
            .await
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "fulfilld", &mut out);
            Ok(true)
        }
        Command::Orders { command } => match command {
            OrdersCommand::Show { id, json } => {
                let (store, _) = operator_store().await?;
                fulfilld::cli::orders_show(store.as_ref(), &id, json, &mut out).await
            }
            OrdersCommand::Export {
                id,
                scenario,
                event_uuid,
                expect,
                force,
            } => {
                let expect = expect.map(|e| match e.as_str() {
                    "recorded" => fulfilld::export::Expectation::Recorded,
                    _ => fulfilld::export::Expectation::Completed,
                });
                let (store, _) = operator_store().await?;
                fulfilld::export::run(
                    store.as_ref(),
                    &id,
                    event_uuid.as_deref(),
                    &scenario,
                    expect,
                    force,
                    &mut out,
                )
                .await
            }
        },
        Command::Jobs { command } => match command {
            JobsCommand::List { state, limit, json } => {
                let state = state.parse().map_err(anyhow::Error::msg)?;
                let (store, config) = operator_store().await?;
                fulfilld::cli::jobs_list(
                    store.as_ref(),
                    &config.channel,
                    state,
                    limit,
                    json,
                    &mut out,
                )
                .await
            }
        },
        Command::Doctor { component } => {
            fulfilld::doctor::run(
                fulfilld::config::Config::from_env(),
                component.as_deref(),
                &mut out,
            )
            .await
        }
        Command::Demo {
            component,
            state_dir,
        } => {
            let log = demo_log_path(&state_dir);
            fulfilld::demo::run(&component, &state_dir, &log, shutdown_signal(), &mut out)
                .await
                .map(|()| true)
        }
    }
}

/// The store and channel the operator commands work on (`config::OperatorConfig`).
async fn operator_store() -> anyhow::Result<(
    fulfilld::store::SharedStore,
    fulfilld::config::OperatorConfig,
)> {
    let config = fulfilld::config::OperatorConfig::from_env()?;
    let store = fulfilld::pipeline::open_store(&config.store).await?;
    Ok((store, config))
}

async fn sandbox(args: SandboxArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let seed = match (&args.seed, args.empty) {
        (_, true) => None,
        (Some(path), false) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the seed file {}", path.display()))?,
        ),
        (None, false) => Some(fulfilld::sandbox::DEFAULT_SEED.to_owned()),
    };
    let config = fulfilld::sandbox::SandboxConfig {
        bind: args.bind,
        admin_port: args.admin_port,
        salesforce_port: args.salesforce_port,
        whmcs_port: args.whmcs_port,
        pubsub_port: args.pubsub_port,
        pubsub: fulfilld::sandbox::PubSubOptions {
            keepalive_interval: std::time::Duration::from_secs(args.keepalive_secs.max(1)),
            retention: std::time::Duration::from_secs(args.retention_secs),
            tls: args.tls,
            ..fulfilld::sandbox::PubSubOptions::default()
        },
        state_dir: Some(args.state_dir),
        seed,
        schema: if args.salesforce_packages.is_empty() {
            fulfilld::fake::Schema::shipped()
        } else {
            fulfilld::fake::Schema::from_packages(&args.salesforce_packages)
                .context("loading --salesforce-package")?
        },
    };
    fulfilld::sandbox::run(config, shutdown_signal()).await
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // `serve --help` lists every setting with its default and meaning.
    let command = <Cli as clap::CommandFactory>::command().mut_subcommand("serve", |serve| {
        serve.after_help(fulfilld::settings::help_text())
    });
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    // Before any subcommand runs: reqwest and tonic panic when they build TLS without a
    // process-wide rustls provider. The HTTP builder and the Pub/Sub paths install it too, but
    // one install here covers every subcommand, including ones added later (`component list`
    // and `deploy` once panicked from the binary for want of it).
    fulfilld::http::install_crypto_provider();
    // The test kit reports on stdout and keeps each run's component logs in its journal
    // (`--verbose` prints them), so by default only warnings reach stderr there.
    let log_file = match &cli.command {
        Command::Demo { state_dir, .. } => Some(demo_log_path(state_dir)),
        _ => None,
    };
    let default_filter = match cli.command {
        Command::Test { .. } => "warn,component=off",
        Command::Sandbox(_) => "warn,fulfilld=info",
        // The demo prints each order's status itself; its log file gets the pipeline's own lines
        // (enqueued, orchestration started and finished). FULFILLD_LOG=info adds every step.
        Command::Demo { .. } => "warn,fulfilld::pipeline=info",
        // The doctor's report is its output; a WARN from a client it builds still shows.
        Command::Cursor { .. }
        | Command::DeadLetters { .. }
        | Command::Orders { .. }
        | Command::Jobs { .. }
        | Command::Completions { .. }
        | Command::Doctor { .. } => "warn",
        _ => "warn,fulfilld=info,component=info",
    };
    // Traces are exported by the commands that run jobs, when OTEL_EXPORTER_OTLP_ENDPOINT (or
    // the traces one) is set; a bad OTEL_* value stops them like any bad setting.
    let traces = match &cli.command {
        Command::Serve | Command::Fulfill { .. } => match fulfilld::config::traces_from_env() {
            Ok(traces) => traces,
            Err(error) => {
                let _ = writeln!(std::io::stderr(), "fulfilld: {error}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let export = match init_tracing(default_filter, log_file.as_deref(), traces.as_ref()) {
        Ok(export) => export,
        Err(error) => {
            let error = fulfilld::error::chain(error.as_ref());
            let _ = writeln!(std::io::stderr(), "fulfilld: {error}");
            return ExitCode::from(2);
        }
    };
    let result = run(cli.command).await;
    // After serve's graceful stop (or fulfill's one job): the spans still held go out now.
    if let Some(export) = export {
        export.flush().await;
    }
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            // The whole chain once: a store error's message already ends with its cause.
            let error = fulfilld::error::chain(error.as_ref());
            let _ = writeln!(std::io::stderr(), "fulfilld: {error}");
            ExitCode::from(2)
        }
    }
}
