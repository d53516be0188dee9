//! The `fulfilld` subcommands, as library functions writing to any `Write` (tests call them
//! directly; `main` passes stdout).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::domain::Event;
use crate::runtime::manifest::{self, Manifest};
use crate::runtime::policy::CapabilityPolicy;
use crate::runtime::{Runtime, RuntimeConfig, check};
use crate::services::Services;
use crate::testkit::TestKit;
use crate::testkit::scenario::{Scenario, run_scenario};

/// `fulfilld component check <file.wasm> [--policy <file>]`: exit status true when the component
/// is usable (its manifest within the policy).
pub async fn component_check(
    path: &Path,
    policy: Option<&Path>,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let wasm = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 2,
        ..offline_runtime_config(policy)?
    })?;
    match runtime.load(&wasm).await {
        Ok(component) => {
            let surface = check::surface(&wasm)?;
            let info = component.info();
            writeln!(
                out,
                "ok: {} {} implements {}@{} (built against {}; {} bytes, sha256 {})",
                info.name,
                info.version,
                check::WIT_PACKAGE,
                check::WIT_VERSION,
                check::built_version(&surface)
                    .map_or_else(|| "an unknown version".to_owned(), |v| v.to_string()),
                wasm.len(),
                component.digest()
            )?;
            writeln!(out, "imports: {}", surface.imports.join(", "))?;
            match component.manifest() {
                Some(manifest) => write_manifest(manifest, out)?,
                None => writeln!(
                    out,
                    "manifest: none (runs under the host's capability policy and reads only \
                     PORTAL_PRICEBOOK_ID and SF_PROVISION_EVENT_CHANNEL)"
                )?,
            }
            Ok(true)
        }
        Err(error) => {
            writeln!(
                out,
                "error: {}: {}",
                path.display(),
                crate::error::chain(&error)
            )?;
            Ok(false)
        }
    }
}

/// The runtime settings of the commands that run a component without a host (`component
/// check`, `test`): the defaults, under the `--policy` file when one is given.
fn offline_runtime_config(policy: Option<&Path>) -> anyhow::Result<RuntimeConfig> {
    let mut config = RuntimeConfig::default();
    if let Some(path) = policy {
        config.policy = CapabilityPolicy::load(path).context("--policy")?;
    }
    Ok(config)
}

/// The manifest as `component check` shows it.
fn write_manifest(manifest: &Manifest, out: &mut dyn Write) -> std::io::Result<()> {
    let keys: Vec<String> = manifest
        .config
        .iter()
        .map(|(key, entry)| match entry.default_value() {
            Some(value) => format!("{key}={value:?}"),
            None => key.clone(),
        })
        .collect();
    let caps = &manifest.capabilities;
    let updates: Vec<String> = caps
        .update
        .iter()
        .flat_map(|(object, fields)| fields.iter().map(move |f| format!("{object}.{f}")))
        .collect();
    let list = |items: Vec<&str>| {
        if items.is_empty() {
            "(none)".to_owned()
        } else {
            items.join(", ")
        }
    };
    writeln!(out, "manifest: wit {}", manifest.component.wit)?;
    writeln!(
        out,
        "  config: {}",
        list(keys.iter().map(String::as_str).collect())
    )?;
    writeln!(
        out,
        "  query: {}",
        list(caps.query.iter().map(String::as_str).collect())
    )?;
    writeln!(
        out,
        "  update: {}",
        list(updates.iter().map(String::as_str).collect())
    )?;
    writeln!(
        out,
        "  billing: {}",
        list(caps.billing.iter().map(String::as_str).collect())
    )?;
    if !caps.read.is_empty() {
        let reads: Vec<String> = caps
            .read
            .iter()
            .flat_map(|(object, paths)| paths.iter().map(move |p| format!("{object}.{p}")))
            .collect();
        writeln!(
            out,
            "  read (checked by doctor): {}",
            list(reads.iter().map(String::as_str).collect())
        )?;
    }
    Ok(())
}

/// `fulfilld component pack <file.wasm> --manifest <component.toml> [--out <file>]`: embeds the
/// manifest (validated first) into the component, in place unless `out` is given.
pub fn component_pack(
    file: &Path,
    manifest: &Path,
    to: Option<&Path>,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let meta = std::fs::metadata(manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    anyhow::ensure!(
        meta.len() <= manifest::MAX_MANIFEST_BYTES as u64,
        "{}: {} bytes, over the {}-byte manifest limit",
        manifest.display(),
        meta.len(),
        manifest::MAX_MANIFEST_BYTES
    );
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let packed = manifest::embed(&wasm, &text)
        .with_context(|| format!("cannot pack {} into {}", manifest.display(), file.display()))?;
    let target = to.unwrap_or(file);
    // Written beside the target and renamed over it: a failed write never leaves half a file.
    let mut staging = target.as_os_str().to_owned();
    staging.push(".packing");
    let staging = PathBuf::from(staging);
    std::fs::write(&staging, &packed)
        .and_then(|()| std::fs::rename(&staging, target))
        .with_context(|| format!("cannot write {}", target.display()))?;
    writeln!(
        out,
        "packed {} into {} ({} bytes, sha256 {})",
        manifest.display(),
        target.display(),
        packed.len(),
        crate::registry::sha256_hex(&packed)
    )?;
    let stale = crate::registry::signature::signature_path(target);
    if stale.exists() {
        writeln!(
            out,
            "note: {} signs the bytes before packing and no longer verifies: sign again",
            stale.display()
        )?;
    }
    Ok(true)
}

/// `fulfilld test <component.wasm> <scenario...>`: one PASS/FAIL line per scenario with the
/// first difference; true when all pass. `packages` (`--salesforce-package`) replace the shipped
/// Salesforce package as the fake org's schema.
pub async fn test(
    component: &Path,
    scenarios: &[PathBuf],
    policy: Option<&Path>,
    packages: &[PathBuf],
    verbose: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let schema = if packages.is_empty() {
        None
    } else {
        Some(crate::fake::Schema::from_packages(packages).context("loading --salesforce-package")?)
    };
    let kit = TestKit::load_file_with(component, offline_runtime_config(policy)?).await?;
    let info = kit.component().info();
    writeln!(
        out,
        "component {} {} ({})",
        info.name,
        info.version,
        component.display()
    )?;
    let files = expand(scenarios)?;
    let (mut passed, mut failed) = (0usize, 0usize);
    for file in &files {
        let scenario = match Scenario::load(file) {
            Ok(mut scenario) => {
                scenario.base_schema = schema.clone();
                scenario
            }
            Err(error) => {
                failed += 1;
                writeln!(
                    out,
                    "FAIL {}: {}",
                    file.display(),
                    crate::error::chain(&error)
                )?;
                continue;
            }
        };
        let result = run_scenario(&kit, &scenario).await;
        if result.passed() {
            passed += 1;
            writeln!(out, "PASS {}", result.name)?;
        } else {
            failed += 1;
            let difference = result.first_difference().unwrap_or_default();
            writeln!(out, "FAIL {}: {difference}", result.name)?;
        }
        if verbose {
            for run in &result.runs {
                let calls: Vec<String> = run
                    .report
                    .journal
                    .iter()
                    .flat_map(|j| j.calls.iter().map(crate::testkit::scenario::call_label))
                    .collect();
                writeln!(out, "  {}: {:?}", run.name, run.report.result)?;
                writeln!(out, "    calls: {}", calls.join(", "))?;
                for log in run.report.journal.iter().flat_map(|j| &j.logs) {
                    let fields: Vec<String> =
                        log.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    writeln!(
                        out,
                        "    log {:<5} {:<18} {} {}",
                        log.level,
                        log.step,
                        log.message,
                        fields.join(" ")
                    )?;
                }
            }
        }
    }
    writeln!(out, "{passed} passed, {failed} failed")?;
    Ok(failed == 0)
}

/// The scenario files to run; at least one.
fn expand(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let files = crate::testkit::scenario::scenario_files(paths)
        .map_err(|(dir, err)| anyhow::anyhow!("cannot list {}: {err}", dir.display()))?;
    anyhow::ensure!(!files.is_empty(), "no scenario files given");
    Ok(files)
}

/// `fulfilld fulfill --order-id <id>`: provisions one Order now against the configured
/// Salesforce org and WHMCS (the operator's "retry fulfill"), printing the job's result as JSON.
pub async fn fulfill_once(
    config: &Config,
    component: &Path,
    order_id: &str,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let services: Arc<dyn Services> = Arc::new(config.live_services()?);
    let runtime = Runtime::new(config.runtime.clone())?;
    let wasm =
        std::fs::read(component).with_context(|| format!("cannot read {}", component.display()))?;
    let component = runtime
        .load(&wasm)
        .await
        .with_context(|| format!("cannot load {}", component.display()))?;
    let event = Event::manual(order_id, &config.channel, crate::domain::now_ms());
    let report = runtime
        .run(&component, Arc::clone(&services), &event, false)
        .await;
    // As the workers do: a trap or a failure before the guard leaves the Order Activating; the
    // host marks it Failed (and says so) when it still is.
    let marked_failed = match &report.result {
        Err(failure) => matches!(
            crate::pipeline::failed::mark_failed_logged(services.as_ref(), order_id, failure).await,
            Some(crate::pipeline::failed::Marked::Failed)
        ),
        Ok(_) => false,
    };
    let summary = serde_json::json!({
        "order_id": order_id,
        "component": report.component,
        "host_calls": report.host_calls,
        "elapsed_ms": report.elapsed.as_millis(),
        "result": match &report.result {
            Ok(outcome) => serde_json::to_value(outcome)?,
            Err(failure) => serde_json::to_value(failure)?,
        },
        "host_marked_failed": marked_failed,
    });
    writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
    Ok(report.result.is_ok())
}

/// `fulfilld cursor ...`: what operators can do with a channel's replay cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorAction {
    /// Print the cursor, a pending backfill and the lease holder.
    Show,
    /// Store this replay id (decimal, as under `sf:pe:replay:<channel>`); the next subscription
    /// resumes strictly after it.
    Reset(crate::domain::ReplayId),
    /// Remove the cursor: the next subscription starts per `SF_EVENTS_REPLAY`.
    Clear,
    /// Subscribe from EARLIEST once (a backfill); deduplication by EventUuid keeps orders that
    /// were already enqueued from running twice.
    Backfill,
}

/// Runs a cursor command against the store.
///
/// Reset, clear and backfill are refused (exit 1) while a replica holds the channel's lease: the
/// running leader would overwrite the cursor with its next write and never see the request. Stop
/// the readers first, or pass `force`.
pub async fn cursor(
    store: &dyn crate::store::Store,
    channel: &str,
    action: CursorAction,
    force: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let key = crate::store::cursor_key(channel);
    if action != CursorAction::Show
        && !force
        && let Some(lease) = store.lease(channel).await?
    {
        writeln!(
            out,
            "refused: replica {} is reading {channel} (lease epoch {}, expires in {} ms); its next \
             cursor write would undo this. Stop the readers (or set SF_EVENTS_ENABLED=false on \
             them) and run it again, or pass --force.",
            lease.holder, lease.epoch, lease.expires_in_ms
        )?;
        return Ok(false);
    }
    match action {
        CursorAction::Show => {
            let cursor = store.cursor(channel).await?;
            let backfill = store.backfill_requested(channel).await?;
            let lease = store.lease(channel).await?;
            writeln!(out, "channel:  {channel}")?;
            writeln!(
                out,
                "cursor:   {} ({key})",
                cursor.map_or_else(|| "none".to_owned(), |c| c.to_string())
            )?;
            writeln!(
                out,
                "backfill: {}",
                if backfill {
                    "pending (next subscription starts from EARLIEST)"
                } else {
                    "none"
                }
            )?;
            match lease {
                Some(lease) => writeln!(
                    out,
                    "leader:   {} (epoch {}, lease expires in {} ms)",
                    lease.holder, lease.epoch, lease.expires_in_ms
                )?,
                None => writeln!(out, "leader:   none")?,
            }
        }
        CursorAction::Reset(replay_id) => {
            let before = store.cursor(channel).await?;
            store.set_cursor(channel, Some(&replay_id)).await?;
            writeln!(
                out,
                "{key}: {} -> {replay_id}",
                before.map_or_else(|| "none".to_owned(), |c| c.to_string())
            )?;
            writeln!(
                out,
                "the next subscription (after a restart or a lease change) resumes after {replay_id}"
            )?;
        }
        CursorAction::Clear => {
            store.set_cursor(channel, None).await?;
            writeln!(
                out,
                "{key}: removed; the next subscription starts per SF_EVENTS_REPLAY"
            )?;
        }
        CursorAction::Backfill => {
            store.request_backfill(channel).await?;
            writeln!(
                out,
                "backfill requested for {channel}: the next subscription starts from EARLIEST once; \
                 events already enqueued are recognised by EventUuid and not run again"
            )?;
        }
    }
    Ok(true)
}

/// Who the job journal says did what an operator command did.
const OPERATOR: &str = "operator (fulfilld CLI)";

/// `fulfilld dead-letters ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterAction {
    List { limit: usize },
    Show { id: String },
    Requeue { id: String },
}

/// Runs a dead-letter command against the store.
pub async fn dead_letters(
    store: &dyn crate::store::Store,
    channel: &str,
    action: DeadLetterAction,
    journal_retention: std::time::Duration,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    match action {
        DeadLetterAction::List { limit } => {
            let total = store.dead_letter_count(channel).await?;
            let letters = store.dead_letters(channel, limit).await?;
            writeln!(out, "{total} dead letter(s) for {channel}")?;
            for letter in letters {
                writeln!(
                    out,
                    "{}  {}  {:<11} uuid={} replay_id={} deliveries={}  {}",
                    letter.id,
                    crate::pipeline::rfc3339_ms(letter.dead_at_ms),
                    format!("{:?}", letter.kind).to_lowercase(),
                    letter.event_uuid,
                    if letter.replay_id.as_bytes().is_empty() {
                        "-".to_owned()
                    } else {
                        letter.replay_id.to_string()
                    },
                    letter.deliveries,
                    letter.reason
                )?;
            }
        }
        DeadLetterAction::Show { id } => {
            let letter = store.dead_letter(channel, &id).await?;
            let payload = match letter.kind {
                crate::store::DeadLetterKind::Job | crate::store::DeadLetterKind::Damaged => {
                    serde_json::from_slice::<serde_json::Value>(&letter.payload).unwrap_or_else(
                        |_| {
                            serde_json::Value::String(
                                String::from_utf8_lossy(&letter.payload).into(),
                            )
                        },
                    )
                }
                crate::store::DeadLetterKind::Undecodable => {
                    use base64::Engine as _;
                    serde_json::json!({
                        "base64": base64::engine::general_purpose::STANDARD.encode(&letter.payload),
                        "hex": hex::encode(&letter.payload),
                    })
                }
            };
            let shown = serde_json::json!({
                "id": letter.id,
                "channel": letter.channel,
                "kind": letter.kind,
                "event_uuid": letter.event_uuid,
                "replay_id": letter.replay_id.to_string(),
                "reason": letter.reason,
                "deliveries": letter.deliveries,
                "dead_at": crate::pipeline::rfc3339_ms(letter.dead_at_ms),
                "payload": payload,
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&shown)?)?;
        }
        DeadLetterAction::Requeue { id } => match crate::pipeline::journal::requeue(
            store,
            OPERATOR,
            channel,
            &id,
            journal_retention,
        )
        .await
        {
            Ok(job) => writeln!(out, "requeued dead letter {id} as job {job}")?,
            Err(crate::store::StoreError::Invalid(why)) => {
                writeln!(out, "cannot requeue {id}: {why}")?;
                return Ok(false);
            }
            Err(err) => return Err(err.into()),
        },
    }
    Ok(true)
}

/// `fulfilld component deploy | list | show | activate | rollback`: calls a running host's admin
/// API (`FULFILLD_ADMIN_URL`, e.g. `http://fulfilld:8080`, with `FULFILLD_ADMIN_TOKEN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAction {
    /// Upload a `.wasm`; with `activate`, make it live once it passes the gates.
    Deploy {
        file: std::path::PathBuf,
        activate: bool,
        deployed_by: String,
        /// The signature file; `None` picks up `<file>.sig` when it exists.
        signature: Option<std::path::PathBuf>,
        /// A directory of scenario files shipped with the deploy.
        scenarios: Option<std::path::PathBuf>,
    },
    List,
    Show {
        sha256: String,
    },
    Activate {
        sha256: String,
    },
    Rollback,
}

/// The multipart body of a deploy: the component, its signature (the given file, or
/// `<file>.sig` when it exists) and the scenario files of `scenarios`.
fn deploy_form(
    file: &Path,
    signature: Option<&Path>,
    scenarios: Option<&Path>,
) -> anyhow::Result<reqwest::multipart::Form> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "component.wasm".into());
    let mut form = reqwest::multipart::Form::new().part(
        "component",
        reqwest::multipart::Part::bytes(wasm).file_name(name),
    );
    let default_sig = crate::registry::signature::signature_path(file);
    let sig_path = match signature {
        Some(path) => Some(path.to_path_buf()),
        None => default_sig.is_file().then_some(default_sig),
    };
    if let Some(path) = sig_path {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the signature {}", path.display()))?;
        form = form.text("signature", text.trim().to_owned());
    }
    if let Some(dir) = scenarios {
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read the scenario directory {}", dir.display()))?;
        let mut count = 0;
        for entry in entries {
            let path = entry
                .with_context(|| format!("cannot read {}", dir.display()))?
                .path();
            if path.extension().is_some_and(|e| e == "toml") {
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                form = form.part(
                    "scenario",
                    reqwest::multipart::Part::bytes(bytes).file_name(name),
                );
                count += 1;
            }
        }
        if count == 0 {
            anyhow::bail!("no scenario files (*.toml) in {}", dir.display());
        }
    }
    Ok(form)
}

/// `fulfilld component new <name> [--dir <parent>]`: writes the crate (`authoring`), then lists
/// its files and the commands that build, pack, check and test it.
pub fn component_new(name: &str, parent: &Path, out: &mut dyn Write) -> anyhow::Result<bool> {
    let new = crate::authoring::new_component(name, parent)?;
    writeln!(out, "created {}", new.root.display())?;
    for file in &new.files {
        writeln!(out, "  {}", file.display())?;
    }
    let wasm = new.wasm_path();
    let wasm = wasm.display();
    writeln!(out, "next:")?;
    writeln!(out, "  cd {}", new.root.display())?;
    writeln!(out, "  cargo build --release --target wasm32-wasip2")?;
    // Packed, the build reads the config keys its manifest lists; unpacked, it would not.
    writeln!(
        out,
        "  fulfilld component pack {wasm} --manifest component.toml"
    )?;
    writeln!(out, "  fulfilld component check {wasm}")?;
    writeln!(out, "  fulfilld test {wasm} scenarios")?;
    writeln!(out, "  (README.md: sign and deploy)")?;
    Ok(true)
}

/// `fulfilld component sign`: writes the base64 ed25519 signature of `file`.
pub fn component_sign(
    file: &Path,
    key: &Path,
    out_path: Option<&Path>,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let key = crate::registry::signature::read_signing_key(key).map_err(anyhow::Error::msg)?;
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let signature = crate::registry::signature::sign(&key, &wasm);
    let target = match out_path {
        Some(path) => path.to_path_buf(),
        None => crate::registry::signature::signature_path(file),
    };
    std::fs::write(&target, format!("{signature}\n"))
        .with_context(|| format!("cannot write {}", target.display()))?;
    writeln!(
        out,
        "signed {} (sha256 {}): {}",
        file.display(),
        crate::registry::sha256_hex(&wasm),
        target.display()
    )?;
    Ok(true)
}

/// Runs an admin command; prints the host's JSON answer. `Ok(false)` when the host refused it
/// (the answer's `error` is printed).
pub async fn admin(
    base_url: &str,
    token: &str,
    action: AdminAction,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let base = format!("{}/admin", base_url.trim_end_matches('/'));
    // A deploy uploads the component and waits for its gates (compile, scenarios) to run.
    let http = crate::http::http_client(std::time::Duration::from_secs(300))
        .context("cannot build the HTTP client")?;
    let request = match &action {
        AdminAction::Deploy {
            file,
            activate,
            deployed_by,
            signature,
            scenarios,
        } => {
            let form = deploy_form(file, signature.as_deref(), scenarios.as_deref())?;
            http.post(format!("{base}/components?activate={activate}"))
                .header("x-deployed-by", deployed_by.as_str())
                .multipart(form)
        }
        AdminAction::List => http.get(format!("{base}/components")),
        AdminAction::Show { sha256 } => http.get(format!("{base}/components/{sha256}")),
        AdminAction::Activate { sha256 } => {
            http.post(format!("{base}/components/{sha256}/activate"))
        }
        AdminAction::Rollback => http.post(format!("{base}/rollback")),
    };
    let response = request
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach the admin API at {base}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .with_context(|| format!("the admin API answered {status} without JSON"))?;
    if status.is_success() {
        writeln!(out, "{}", serde_json::to_string_pretty(&body)?)?;
        Ok(true)
    } else {
        let message = body["error"].as_str().unwrap_or("no error message");
        writeln!(out, "refused ({status}): {message}")?;
        Ok(false)
    }
}

/// `fulfilld orders show <Order Id | EventUuid>`: every job of the Order, newest first, each with
/// its journal. `false` (exit 1) when nothing is known about `id`.
pub async fn orders_show(
    store: &dyn crate::store::Store,
    id: &str,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let Some(view) = crate::pipeline::journal::order_view(store, id).await? else {
        writeln!(out, "{}", crate::pipeline::journal::nothing_known(id))?;
        return Ok(false);
    };
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&view)?)?;
        return Ok(true);
    }
    match &view.order_id {
        Some(order) => writeln!(
            out,
            "Order {order}: {} job(s), newest first",
            view.jobs.len()
        )?,
        None => writeln!(out, "EventUuid {}: {} job(s)", view.query, view.jobs.len())?,
    }
    for job in &view.jobs {
        writeln!(out)?;
        let mut head = format!(
            "job {}  replay {}  {}",
            job.event_uuid,
            if job.replay_id.is_empty() {
                "-"
            } else {
                &job.replay_id
            },
            job.state.to_uppercase()
        );
        if let Some(record) = &job.record {
            if let Some(code) = &record.code {
                head.push_str(&format!(" {code}"));
            }
            head.push_str(&format!(
                " on {} after {} deliver{}",
                record.component,
                record.deliveries,
                if record.deliveries == 1 { "y" } else { "ies" }
            ));
        }
        writeln!(out, "{head}")?;
        if let Some(record) = &job.record
            && !record.message.is_empty()
        {
            writeln!(out, "  {}", crate::domain::clip(&record.message, 300))?;
        }
        for entry in &job.journal {
            writeln!(
                out,
                "  {}  {:<14} {}",
                crate::pipeline::rfc3339_ms(entry.at_ms),
                crate::domain::clip(&entry.replica, 40),
                describe_entry(&entry.event)
            )?;
        }
        if job.journal.is_empty() {
            writeln!(out, "  (no journal kept for this job)")?;
        }
    }
    Ok(true)
}

/// One journal entry on one line.
fn describe_entry(event: &crate::store::JournalEvent) -> String {
    use crate::store::JournalEvent;
    match event {
        JournalEvent::Enqueued { replay_id } => format!("enqueued       replay {replay_id}"),
        JournalEvent::Claimed { worker, delivery } => {
            format!("claimed        by {worker}, delivery {delivery}")
        }
        JournalEvent::Call {
            interface,
            action,
            target,
            duration_ms,
            outcome,
            code,
            request,
            answer,
            ..
        } => {
            let what = if interface == "billing" {
                format!("billing {action}")
            } else {
                format!(
                    "{interface} {action} {}",
                    crate::domain::clip(&target.replace('\n', " "), 120)
                )
            };
            let result = match code {
                Some(code) => format!("{outcome} {code}"),
                None => outcome.clone(),
            };
            let captured = if request.is_some() || answer.is_some() {
                "  (captured)"
            } else {
                ""
            };
            format!("call           {what}  {duration_ms} ms  {result}{captured}")
        }
        JournalEvent::Finished {
            delivery,
            outcome,
            code,
            message,
            component,
            elapsed_ms,
        } => {
            let code = code.as_deref().map(|c| format!(" {c}")).unwrap_or_default();
            let message = if message.is_empty() {
                String::new()
            } else {
                format!(": {}", crate::domain::clip(message, 200))
            };
            format!(
                "finished       {outcome}{code}{message} (delivery {delivery}, {component}, {elapsed_ms} ms)"
            )
        }
        JournalEvent::DeadLettered { reason } => {
            format!("dead-lettered  {}", crate::domain::clip(reason, 300))
        }
        JournalEvent::Requeued { dead_letter_id } => {
            format!("requeued       from dead letter {dead_letter_id}")
        }
        JournalEvent::Damaged { problem, .. } => {
            format!("damaged entry  {}", crate::domain::clip(problem, 300))
        }
    }
}

/// `fulfilld jobs list --state queued|running|failed|dead`.
pub async fn jobs_list(
    store: &dyn crate::store::Store,
    channel: &str,
    state: crate::store::JobState,
    limit: usize,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let jobs = crate::store::list_jobs(store, channel, state, limit).await?;
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "state": state, "jobs": jobs }))?
        )?;
        return Ok(true);
    }
    writeln!(
        out,
        "{} {} job(s) on {channel}",
        jobs.len(),
        serde_json::to_value(state)?.as_str().unwrap_or("")
    )?;
    for job in &jobs {
        let mut line = format!(
            "{}  order={}  replay={}  deliveries={}",
            job.event_uuid,
            job.order_id.as_deref().unwrap_or("-"),
            job.replay_id,
            job.deliveries
        );
        if let Some(worker) = &job.worker {
            line.push_str(&format!("  worker={worker}"));
        }
        if let Some(idle) = job.idle_ms {
            line.push_str(&format!("  idle={idle}ms"));
        }
        if let Some(at) = job.enqueued_at_ms {
            line.push_str(&format!("  enqueued={}", crate::pipeline::rfc3339_ms(at)));
        }
        if let Some(at) = job.finished_at_ms {
            line.push_str(&format!("  at={}", crate::pipeline::rfc3339_ms(at)));
        }
        if let Some(id) = &job.dead_letter_id {
            line.push_str(&format!("  dead_letter={id}"));
        }
        if let Some(code) = &job.code {
            line.push_str(&format!("  code={code}"));
        }
        if let Some(message) = &job.message {
            line.push_str(&format!("  {}", crate::domain::clip(message, 200)));
        }
        writeln!(out, "{line}")?;
    }
    Ok(true)
}
