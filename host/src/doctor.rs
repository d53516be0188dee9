//! `fulfilld doctor`: a preflight an operator runs with the production settings before `serve`.
//!
//! Each check prints `PASS` with what it found, or `FAIL` with the problem and the fix; a check
//! that needs an earlier one (the schema needs a session) says so instead of failing twice. The
//! checks, in order:
//! - the settings parse;
//! - the component loads under the capability policy (`--component`, else `FULFILLD_COMPONENT`);
//! - the JWT bearer grant: which user, which org, which instance;
//! - the schema: every object the component queries exists, every field it updates exists and is
//!   updateable, every field its manifest declares under `[capabilities.read]` exists (describe,
//!   relationship paths followed);
//! - the event topic exists and the user may subscribe (GetTopic);
//! - WHMCS: the credentials are accepted and the version is read (`WhmcsDetails`), against the
//!   component's `WHMCS_VERSION` setting;
//! - every WHMCS product the org maps (`Product2.WH_Product_ID__c`) exists in WHMCS;
//! - the store: Redis 6.2 or newer with `maxmemory-policy noeviction`; or the embedded store's
//!   file opens (when it does not exist yet, nothing is created: `serve` creates it).
//!
//! Nothing is changed anywhere: describe, query, user info, GetTopic, `WhmcsDetails`,
//! `GetProducts` and `INFO` only (an existing embedded store file is opened as `serve` opens
//! it). Secrets never appear in the output.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::{Config, StoreConfig};
use crate::error::{CallError, chain};
use crate::runtime::manifest::Manifest;
use crate::runtime::{LoadedComponent, Runtime};
use crate::salesforce::SalesforceClient;
use crate::services::{LiveServices, Services};
use crate::store::redis::{RedisStore, RedisTarget, RedisTopology};

/// The first WHMCS version whose AddOrder reads `qty[]` (developers.whmcs.com/api-reference/
/// addorder/, version history).
const QTY_VERSION: (u32, u32) = (8, 12);

/// Bound on each Redis command of the store check.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass(String),
    Fail {
        problem: String,
        fix: String,
    },
    /// Not run because a check it needs failed.
    Skipped(String),
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Finding {
    pub check: &'static str,
    pub outcome: Outcome,
}

fn pass(check: &'static str, what: impl Into<String>) -> Finding {
    Finding {
        check,
        outcome: Outcome::Pass(what.into()),
    }
}

fn fail(check: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        check,
        outcome: Outcome::Fail {
            problem: problem.into(),
            fix: fix.into(),
        },
    }
}

fn skipped(check: &'static str, why: impl Into<String>) -> Finding {
    Finding {
        check,
        outcome: Outcome::Skipped(why.into()),
    }
}

/// Runs every check with `config` (or reports why the settings cannot be read) and prints the
/// report to `out`. True when every check passed.
pub async fn run(
    config: Result<Config, crate::config::ConfigError>,
    component: Option<&Path>,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let findings = match config {
        Ok(config) => checks(&config, component).await,
        Err(error) => vec![fail(
            "settings",
            error.to_string(),
            "set the settings named above (docs/operations.md lists every setting)",
        )],
    };
    write_report(&findings, out)?;
    Ok(findings
        .iter()
        .all(|f| matches!(f.outcome, Outcome::Pass(_))))
}

/// The report as `doctor` prints it: one line per check, the fix indented under a failure, and a
/// closing count.
pub fn write_report(findings: &[Finding], out: &mut dyn Write) -> std::io::Result<()> {
    let width = findings.iter().map(|f| f.check.len()).max().unwrap_or(0);
    for finding in findings {
        match &finding.outcome {
            Outcome::Pass(what) => writeln!(out, "PASS  {:width$}  {what}", finding.check)?,
            Outcome::Fail { problem, fix } => {
                writeln!(out, "FAIL  {:width$}  {problem}", finding.check)?;
                writeln!(out, "      {:width$}  fix: {fix}", "")?;
            }
            Outcome::Skipped(why) => writeln!(out, "SKIP  {:width$}  {why}", finding.check)?,
        }
    }
    let failed = findings
        .iter()
        .filter(|f| matches!(f.outcome, Outcome::Fail { .. }))
        .count();
    let skipped = findings
        .iter()
        .filter(|f| matches!(f.outcome, Outcome::Skipped(_)))
        .count();
    if failed == 0 && skipped == 0 {
        writeln!(out, "all {} checks passed", findings.len())
    } else {
        writeln!(
            out,
            "{failed} of {} checks failed, {skipped} not run",
            findings.len()
        )
    }
}

async fn checks(config: &Config, component: Option<&Path>) -> Vec<Finding> {
    let mut findings = vec![pass(
        "settings",
        format!("read (store: {})", store_name(&config.serve.store)),
    )];
    let (finding, loaded) = check_component(config, component).await;
    findings.push(finding);

    let live = match config.live_services() {
        Ok(live) => live,
        Err(error) => {
            findings.push(fail(
                "salesforce login",
                chain(&error),
                "check SF_PRIVATE_KEY_PATH (an RSA private key PEM) and SF_API_VERSION",
            ));
            for check in [
                "salesforce schema",
                "event topic",
                "whmcs",
                "whmcs products",
            ] {
                findings.push(skipped(check, "needs the Salesforce and WHMCS clients"));
            }
            return finish(config, findings).await;
        }
    };
    let salesforce = live.salesforce().clone();
    let session = match salesforce.session().await {
        Ok(session) => session,
        Err(error) => {
            findings.push(fail(
                "salesforce login",
                error.to_string(),
                login_fix(&error),
            ));
            findings.push(skipped("salesforce schema", "needs a Salesforce session"));
            findings.push(skipped("event topic", "needs a Salesforce session"));
            findings.extend(check_whmcs(config, &live, loaded.as_ref()).await.0);
            findings.push(skipped("whmcs products", "needs a Salesforce session"));
            return finish(config, findings).await;
        }
    };
    let who = match salesforce.userinfo().await {
        Ok(info) => format!(
            "user {} in org {}",
            text(&info, "preferred_username").unwrap_or(&config.salesforce.username),
            text(&info, "organization_id").unwrap_or(&session.tenant_id),
        ),
        // The grant worked; user info is only a nicer name for it.
        Err(_) => format!(
            "user {} in org {}",
            config.salesforce.username, session.tenant_id
        ),
    };
    findings.push(pass(
        "salesforce login",
        format!(
            "{who} at {}",
            session.instance_url.as_str().trim_end_matches('/')
        ),
    ));

    findings.push(match &loaded {
        Some(component) => check_schema(&salesforce, component).await,
        None => skipped(
            "salesforce schema",
            "needs the component (what it reads and writes)",
        ),
    });

    let opts = config.subscriber_options(None);
    findings.push(match crate::pubsub::get_topic(&opts, &session).await {
        Ok(topic) if topic.can_subscribe => pass(
            "event topic",
            format!(
                "{} can be subscribed (schema {})",
                config.channel, topic.schema_id
            ),
        ),
        Ok(_) => fail(
            "event topic",
            format!(
                "the integration user may not subscribe to {}",
                config.channel
            ),
            "grant Read on the platform event in the integration user's permission set \
             (salesforce/README.md)",
        ),
        Err(error) => fail(
            "event topic",
            format!("{}: {error}", config.channel),
            "deploy the platform event (salesforce/README.md), check SF_PROVISION_EVENT_CHANNEL \
             and SF_PUBSUB_ENDPOINT",
        ),
    });

    let (whmcs, whmcs_ok) = check_whmcs(config, &live, loaded.as_ref()).await;
    findings.extend(whmcs);
    findings.push(match (&loaded, whmcs_ok) {
        (_, false) => skipped("whmcs products", "needs WHMCS to accept the credentials"),
        (None, _) => skipped(
            "whmcs products",
            "needs the component (which mapping it reads)",
        ),
        (Some(component), true) if !reads_product_mapping(component) => skipped(
            "whmcs products",
            "the component declares no Product2.WH_Product_ID__c read (the default rules' mapping)",
        ),
        (Some(_), true) => check_products(&salesforce, &live).await,
    });
    finish(config, findings).await
}

/// The store check, last: it is the only one that needs no remote service but the store.
async fn finish(config: &Config, mut findings: Vec<Finding>) -> Vec<Finding> {
    findings.push(check_store(&config.serve.store).await);
    findings
}

fn store_name(store: &StoreConfig) -> String {
    match store {
        StoreConfig::Redis { url, topology, .. } => {
            // Host and port only: the URL may carry a password.
            let nodes: Vec<String> = url
                .expose()
                .split(',')
                .filter(|u| !u.trim().is_empty())
                .map(|u| match url::Url::parse(u.trim()) {
                    Ok(url) => format!(
                        "{}:{}",
                        url.host_str().unwrap_or("?"),
                        url.port().unwrap_or(6379)
                    ),
                    Err(_) => "?".to_owned(),
                })
                .collect();
            match topology {
                RedisTopology::Standalone => format!("Redis at {}", nodes.join(", ")),
                RedisTopology::Cluster => format!("Redis Cluster at {}", nodes.join(", ")),
                RedisTopology::Sentinel { master } => {
                    format!(
                        "Redis primary {master} of the Sentinels at {}",
                        nodes.join(", ")
                    )
                }
            }
        }
        StoreConfig::Embedded { path } => format!("embedded at {}", path.display()),
    }
}

fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn login_fix(error: &CallError) -> String {
    match error.kind {
        crate::error::ErrorKind::Network | crate::error::ErrorKind::Timeout => {
            "check SF_LOGIN_URL and that this machine reaches it".to_owned()
        }
        _ => "pre-authorize the connected app for the integration user (its profile or \
              permission set), check that SF_CLIENT_ID is the connected app's consumer key, \
              SF_USERNAME the integration user, that the certificate uploaded to the connected \
              app matches SF_PRIVATE_KEY_PATH, and SF_AUDIENCE (salesforce/README.md)"
            .to_owned(),
    }
}

async fn check_component(
    config: &Config,
    component: Option<&Path>,
) -> (Finding, Option<LoadedComponent>) {
    match load_component(config, component).await {
        Ok((finding, loaded)) => (finding, Some(loaded)),
        Err(finding) => (finding, None),
    }
}

/// The component as `serve` would take it: the PASS line and the loaded component, or the FAIL.
async fn load_component(
    config: &Config,
    component: Option<&Path>,
) -> Result<(Finding, LoadedComponent), Finding> {
    const CHECK: &str = "component";
    let path: PathBuf = component
        .map(Path::to_path_buf)
        .or_else(|| config.component.clone())
        .ok_or_else(|| {
            fail(
                CHECK,
                "no component given",
                "pass --component <file.wasm> or set FULFILLD_COMPONENT",
            )
        })?;
    let wasm = std::fs::read(&path).map_err(|error| {
        fail(
            CHECK,
            format!("cannot read {}: {error}", path.display()),
            "point FULFILLD_COMPONENT at the component file",
        )
    })?;
    // What serve refuses before it loads: an unsigned or badly signed file when signatures are
    // required or a key is set, and, with a registry (the file counts as a deploy), one over
    // the size limit.
    let signature = crate::registry::signature::shipped_with(&path);
    let signed = config
        .serve
        .signatures
        .check(&wasm, signature.as_deref())
        .map_err(|reason| {
            fail(
                CHECK,
                format!("{}: {reason}", path.display()),
                "sign it with `fulfilld component sign` and ship the .sig beside it, or check \
                 FULFILLD_COMPONENT_PUBLIC_KEY (docs/deploying-components.md)",
            )
        })?;
    if config.serve.registry_dir.is_some() && wasm.len() > config.serve.component_max_bytes {
        return Err(fail(
            CHECK,
            format!(
                "{}: {} bytes, over FULFILLD_COMPONENT_MAX_BYTES ({})",
                path.display(),
                wasm.len(),
                config.serve.component_max_bytes
            ),
            "build it with the component profile (docs/component-authoring.md) or raise \
             FULFILLD_COMPONENT_MAX_BYTES",
        ));
    }
    let runtime = Runtime::new(crate::runtime::RuntimeConfig {
        max_instances: 2,
        ..config.runtime.clone()
    })
    .map_err(|error| {
        fail(
            CHECK,
            chain(&error),
            "check the FULFILLD_* runtime settings",
        )
    })?;
    let loaded = runtime.load(&wasm).await.map_err(|error| {
        fail(
            CHECK,
            format!("{}: {}", path.display(), chain(&error)),
            "run `fulfilld component check` on it; rebuild, pack or widen the policy as it \
             says (docs/deploying-components.md)",
        )
    })?;
    let info = loaded.info();
    let finding = pass(
        CHECK,
        format!(
            "{} {} loads ({}, {}, sha256 {})",
            info.name,
            info.version,
            match loaded.manifest() {
                Some(_) => "with its manifest",
                None => "no manifest: the host's policy",
            },
            match signed {
                crate::registry::signature::SignatureCheck::Verified => "signature verified",
                crate::registry::signature::SignatureCheck::Unsigned => "unsigned",
            },
            loaded.digest()
        ),
    );
    Ok((finding, loaded))
}

/// What the component needs of the org: sObject -> (fields read, fields updated).
#[derive(Debug, Default)]
struct Needs {
    objects: BTreeSet<String>,
    read: BTreeMap<String, BTreeSet<String>>,
    update: BTreeMap<String, BTreeSet<String>>,
}

fn needs(component: &LoadedComponent) -> Needs {
    let mut needs = Needs::default();
    match component.manifest() {
        Some(Manifest { capabilities, .. }) => {
            needs.objects.extend(capabilities.query.iter().cloned());
            needs.read = capabilities.read.clone();
            needs.update = capabilities.update.clone();
        }
        None => {
            let policy = component.policy();
            if let Some(query) = &policy.query {
                needs.objects.extend(query.iter().cloned());
            }
            needs.update = policy.update.clone();
        }
    }
    needs.objects.extend(needs.read.keys().cloned());
    needs.objects.extend(needs.update.keys().cloned());
    needs
}

/// Describes, fetched once per sObject.
struct Describes<'a> {
    salesforce: &'a SalesforceClient,
    cache: BTreeMap<String, Result<Value, CallError>>,
}

impl Describes<'_> {
    async fn get(&mut self, sobject: &str) -> &Result<Value, CallError> {
        match self.cache.entry(sobject.to_owned()) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert(self.salesforce.describe(sobject).await)
            }
        }
    }
}

fn field<'a>(describe: &'a Value, name: &str) -> Option<&'a Value> {
    describe
        .get("fields")?
        .as_array()?
        .iter()
        .find(|f| text(f, "name").is_some_and(|n| n.eq_ignore_ascii_case(name)))
}

/// The sObject a relationship name (`Account`, `Product2`, `Owner__r`) of `describe` leads to.
fn relationship_target(describe: &Value, relationship: &str) -> Option<String> {
    describe.get("fields")?.as_array()?.iter().find_map(|f| {
        let name = text(f, "relationshipName")?;
        if !name.eq_ignore_ascii_case(relationship) {
            return None;
        }
        f.get("referenceTo")?
            .as_array()?
            .first()?
            .as_str()
            .map(str::to_owned)
    })
}

/// Follows `path` (`Account.WHMCS_Client_ID__c`) from `object`; an error names what is missing.
async fn resolve(describes: &mut Describes<'_>, object: &str, path: &str) -> Result<(), String> {
    let mut current = object.to_owned();
    let parts: Vec<&str> = path.split('.').collect();
    let (last, relationships) = parts
        .split_last()
        .ok_or_else(|| "an empty path".to_owned())?;
    for relationship in relationships {
        let describe = match describes.get(&current).await {
            Ok(describe) => describe,
            Err(error) => return Err(format!("{current}: {error}")),
        };
        current = relationship_target(describe, relationship)
            .ok_or_else(|| format!("{current} has no relationship {relationship}"))?;
    }
    match describes.get(&current).await {
        Ok(describe) if field(describe, last).is_some() => Ok(()),
        Ok(_) => Err(format!("{current}.{last} does not exist")),
        Err(error) => Err(format!("{current}: {error}")),
    }
}

async fn check_schema(salesforce: &SalesforceClient, component: &LoadedComponent) -> Finding {
    const CHECK: &str = "salesforce schema";
    let needs = needs(component);
    let mut describes = Describes {
        salesforce,
        cache: BTreeMap::new(),
    };
    let mut problems = Vec::new();
    // sObjects whose describe failed: reported once, their fields not checked one by one.
    let mut missing = BTreeSet::new();
    for object in &needs.objects {
        let problem = match describes.get(object).await {
            Ok(describe) if describe.get("queryable").and_then(Value::as_bool) == Some(false) => {
                format!("{object} cannot be queried")
            }
            Ok(_) => continue,
            Err(error) if error.code == "NOT_FOUND" => {
                format!("the sObject {object} does not exist")
            }
            Err(error) => format!("describe {object}: {error}"),
        };
        problems.push(problem);
        missing.insert(object.clone());
    }
    let mut checked = 0usize;
    // A relationship's sObject that cannot be described fails every path through it: once.
    let mut seen = BTreeSet::new();
    for (object, paths) in needs.read.iter().filter(|(o, _)| !missing.contains(*o)) {
        for path in paths {
            checked += 1;
            if let Err(problem) = resolve(&mut describes, object, path).await
                && seen.insert(problem.clone())
            {
                problems.push(format!("read {object}.{path}: {problem}"));
            }
        }
    }
    for (object, fields) in needs.update.iter().filter(|(o, _)| !missing.contains(*o)) {
        let Ok(describe) = describes.get(object).await else {
            continue;
        };
        for name in fields {
            checked += 1;
            match field(describe, name) {
                None => problems.push(format!("update {object}.{name}: it does not exist")),
                Some(f) if f.get("updateable").and_then(Value::as_bool) != Some(true) => {
                    problems.push(format!(
                        "update {object}.{name}: the integration user cannot update it"
                    ));
                }
                Some(_) => {}
            }
        }
    }
    if problems.is_empty() {
        pass(
            CHECK,
            format!(
                "{} sObjects and {checked} fields the component reads or updates exist ({})",
                needs.objects.len(),
                needs.objects.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        )
    } else {
        fail(
            CHECK,
            problems.join("; "),
            "deploy the salesforce/ package (sf project deploy start, salesforce/README.md) and \
             assign its permission set to the integration user; a field of your own org must \
             exist and be visible to that user",
        )
    }
}

/// `major.minor` of a version text (`8.11.2`, `8.13.0-release.1`).
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    Some((major, minor))
}

/// The `whmcs` and `whmcs version` lines, and whether WHMCS accepted the credentials.
async fn check_whmcs(
    config: &Config,
    live: &LiveServices,
    component: Option<&LoadedComponent>,
) -> (Vec<Finding>, bool) {
    const CHECK: &str = "whmcs";
    let answer = match live.billing_call("WhmcsDetails", &Map::new()).await {
        Ok(answer) => answer,
        Err(error) => {
            let fix = match error.kind {
                crate::error::ErrorKind::Network | crate::error::ErrorKind::Timeout => {
                    "check WHMCS_URL and that this machine reaches it"
                }
                _ if error.message.contains("Invalid Permissions") => {
                    "allow the WhmcsDetails action in the API role of WHMCS_IDENTIFIER's \
                     credential (doctor reads the WHMCS version with it)"
                }
                _ => {
                    "check WHMCS_IDENTIFIER and WHMCS_SECRET (Setup > Staff Management > Manage \
                     API Credentials), and that this machine's IP is on WHMCS's API allowlist or \
                     WHMCS_ACCESS_KEY is set"
                }
            };
            let findings = vec![
                fail(CHECK, format!("{}: {}", config.whmcs.url, error), fix),
                skipped("whmcs version", "needs WhmcsDetails to answer"),
            ];
            return (findings, false);
        }
    };
    let version = answer
        .pointer("/whmcs/version")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut findings = vec![pass(
        CHECK,
        format!(
            "credentials accepted at {}; WHMCS {}",
            config.whmcs.url,
            if version.is_empty() {
                "of an unknown version"
            } else {
                &version
            }
        ),
    )];
    // What the component believes: its WHMCS_VERSION config (host setting, else its default).
    let believed = component.and_then(|c| {
        let host = config.exposed().get("WHMCS_VERSION").cloned();
        match c.manifest() {
            Some(manifest) => manifest.config_value("WHMCS_VERSION", host),
            None => host,
        }
    });
    let Some(actual) = major_minor(&version) else {
        findings.push(fail(
            "whmcs version",
            "WhmcsDetails answered no version",
            "set FULFILLD_CONFIG_WHMCS_VERSION to WHMCS's major.minor (Help > About in the \
             admin area)",
        ));
        return (findings, true);
    };
    let Some(believed_text) = believed else {
        findings.push(skipped(
            "whmcs version",
            format!("the component reads no WHMCS_VERSION (WHMCS is {version})"),
        ));
        return (findings, true);
    };
    {
        let believed = major_minor(&believed_text);
        let reads_qty = |v: (u32, u32)| v >= QTY_VERSION;
        match believed {
            Some(b) if reads_qty(b) && !reads_qty(actual) => findings.push(fail(
                "whmcs version",
                format!(
                    "the component assumes WHMCS {believed_text} (AddOrder qty[]), but WHMCS is \
                     {version}, which ignores qty[]: orders of N units would get one"
                ),
                format!(
                    "set FULFILLD_CONFIG_WHMCS_VERSION={}.{} (one AddOrder line per unit)",
                    actual.0, actual.1
                ),
            )),
            Some(_) => findings.push(pass(
                "whmcs version",
                format!("the component's WHMCS_VERSION {believed_text} fits WHMCS {version}"),
            )),
            None => findings.push(fail(
                "whmcs version",
                format!("the component's WHMCS_VERSION {believed_text:?} is not a version"),
                "set FULFILLD_CONFIG_WHMCS_VERSION to WHMCS's major.minor",
            )),
        }
    }
    (findings, true)
}

/// True when the component declares it reads the default rules' product mapping
/// (`Product2.WH_Product_ID__c`, directly or from OrderItem).
fn reads_product_mapping(component: &LoadedComponent) -> bool {
    let Some(manifest) = component.manifest() else {
        // Without a manifest it runs under the host's policy: the default rules' shape.
        return true;
    };
    manifest.capabilities.read.iter().any(|(object, paths)| {
        paths.iter().any(|path| {
            let full = format!("{object}.{path}");
            full.eq_ignore_ascii_case("Product2.WH_Product_ID__c")
                || full.eq_ignore_ascii_case("OrderItem.Product2.WH_Product_ID__c")
        })
    })
}

/// The default rules' mapping field: `Product2.WH_Product_ID__c` holds the WHMCS product id.
const MAPPING_QUERY: &str =
    "SELECT Id, Name, WH_Product_ID__c FROM Product2 WHERE WH_Product_ID__c != null";

async fn check_products(salesforce: &SalesforceClient, live: &LiveServices) -> Finding {
    const CHECK: &str = "whmcs products";
    let mapped = match salesforce.query(MAPPING_QUERY).await {
        Ok(answer) => answer,
        Err(error) => {
            return fail(
                CHECK,
                format!("reading Product2.WH_Product_ID__c: {error}"),
                "deploy the salesforce/ package (Product2.WH_Product_ID__c) and grant the \
                 integration user read access to it",
            );
        }
    };
    let records = mapped
        .get("records")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let products = match live.billing_call("GetProducts", &Map::new()).await {
        Ok(answer) => answer,
        Err(error) => {
            return fail(
                CHECK,
                format!("GetProducts: {error}"),
                "allow the GetProducts action in the API role of WHMCS_IDENTIFIER's credential",
            );
        }
    };
    let known: BTreeSet<String> = products
        .pointer("/products/product")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|p| p.get("pid"))
                .map(|pid| match pid {
                    Value::String(s) => s.trim().to_owned(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let mut missing = Vec::new();
    let mut ids = BTreeSet::new();
    for record in &records {
        let pid = match record.get("WH_Product_ID__c") {
            Some(Value::String(s)) => s.trim().to_owned(),
            Some(Value::Number(n)) => n
                .as_f64()
                .filter(|f| f.fract() == 0.0)
                .map_or_else(|| n.to_string(), |f| format!("{f:.0}")),
            _ => continue,
        };
        if !known.contains(&pid) {
            missing.push(format!(
                "Product2 {} ({}) maps to WHMCS product {pid}, which WHMCS does not have",
                text(record, "Id").unwrap_or("?"),
                text(record, "Name").unwrap_or("?")
            ));
        }
        ids.insert(pid);
    }
    if missing.is_empty() {
        pass(
            CHECK,
            format!(
                "{} mapped products exist in WHMCS ({})",
                ids.len(),
                ids.into_iter().collect::<Vec<_>>().join(", ")
            ),
        )
    } else {
        fail(
            CHECK,
            missing.join("; "),
            "correct Product2.WH_Product_ID__c in Salesforce or create the product in WHMCS",
        )
    }
}

async fn check_store(store: &StoreConfig) -> Finding {
    const CHECK: &str = "store";
    match store {
        StoreConfig::Redis {
            url, topology, tls, ..
        } => {
            let target = RedisTarget {
                url: url.expose().to_owned(),
                topology: topology.clone(),
                tls: tls.clone(),
            };
            check_redis(&target, &store_name(store)).await
        }
        StoreConfig::Embedded { path } if !path.exists() => {
            // Opening would create it: say what serve will do instead.
            let dir = path.parent().unwrap_or(Path::new("."));
            match dir.ancestors().find(|d| d.exists()).map(std::fs::metadata) {
                Some(Ok(meta)) if meta.is_dir() && !meta.permissions().readonly() => pass(
                    CHECK,
                    format!(
                        "no embedded store at {} yet: serve creates it (FULFILLD_STATE_DIR must \
                         be on a persistent volume)",
                        path.display()
                    ),
                ),
                _ => fail(
                    CHECK,
                    format!(
                        "no embedded store at {} and its directory cannot be created",
                        path.display()
                    ),
                    "set FULFILLD_STATE_DIR to a writable directory on a persistent volume, or \
                     set REDIS_URL",
                ),
            }
        }
        StoreConfig::Embedded { path } => match crate::pipeline::open_store(store).await {
            Ok(_) => pass(
                CHECK,
                format!("the embedded store {} opens", path.display()),
            ),
            Err(error) => {
                let text = chain(error.as_ref());
                if text.contains("already open") {
                    pass(
                        CHECK,
                        format!(
                            "the embedded store {} is in use by a running fulfilld",
                            path.display()
                        ),
                    )
                } else {
                    fail(
                        CHECK,
                        text,
                        "check FULFILLD_STATE_DIR (a writable directory on a persistent \
                             volume)",
                    )
                }
            }
        },
    }
}

async fn check_redis(target: &RedisTarget, name: &str) -> Finding {
    const CHECK: &str = "store";
    let info = match redis_info(target).await {
        Ok(info) => info,
        Err(problem) => {
            return fail(
                CHECK,
                format!("{name}: {problem}"),
                "check REDIS_URL (host, port, password, database) and that Redis runs",
            );
        }
    };
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    let version = field("redis_version");
    let policy = field("maxmemory_policy");
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    if let Err(problem) = crate::store::redis::check_redis_version(&version) {
        problems.push(problem);
        fixes.push("upgrade Redis to 6.2 or newer");
    }
    if policy != "noeviction" {
        problems.push(format!(
            "maxmemory-policy is {policy}: Redis may evict deduplication keys and queued jobs"
        ));
        fixes.push("set maxmemory-policy noeviction (CONFIG SET and redis.conf)");
    }
    if problems.is_empty() {
        pass(
            CHECK,
            format!("{name}: Redis {version}, maxmemory-policy noeviction"),
        )
    } else {
        fail(
            CHECK,
            format!("{name}: {}", problems.join("; ")),
            fixes.join("; "),
        )
    }
}

async fn redis_info(target: &RedisTarget) -> Result<String, String> {
    // A namespace of its own: the connection writes nothing, it only reads INFO.
    let store = tokio::time::timeout(
        REDIS_TIMEOUT * 2,
        RedisStore::connect_with_timeout(target, "fulfilld-doctor", REDIS_TIMEOUT),
    )
    .await
    .map_err(|_| "connecting timed out".to_owned())?
    .map_err(|e| format!("cannot connect: {}", chain(&e)))?;
    tokio::time::timeout(REDIS_TIMEOUT, store.server_info())
        .await
        .map_err(|_| "INFO timed out".to_owned())?
        .map_err(|e| format!("INFO: {}", chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_read_as_major_minor() {
        assert_eq!(major_minor("8.11.2"), Some((8, 11)));
        assert_eq!(major_minor("8.13.0-release.1"), Some((8, 13)));
        assert_eq!(major_minor("9"), Some((9, 0)));
        assert_eq!(major_minor("x.1"), None);
    }

    #[test]
    fn the_report_indents_each_fix_under_its_failure_and_counts() {
        let mut out = Vec::new();
        write_report(
            &[
                pass("settings", "read"),
                fail(
                    "store",
                    "Redis 7.0: maxmemory-policy is allkeys-lru",
                    "set noeviction",
                ),
                skipped("event topic", "needs a Salesforce session"),
            ],
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert_eq!(
            text,
            "PASS  settings     read\n\
             FAIL  store        Redis 7.0: maxmemory-policy is allkeys-lru\n\
             \x20                  fix: set noeviction\n\
             SKIP  event topic  needs a Salesforce session\n\
             1 of 3 checks failed, 1 not run\n"
        );
    }
}
