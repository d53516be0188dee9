//! Scenario files: a seeded fake org and WHMCS, one or more runs of `fulfill`, failures to inject
//! and what each run must do. TOML; `docs/component-authoring.md` describes every key.
//!
//! ```toml
//! name = "no payment method"
//! [[org.Order]]
//! Id = "801000000000001AAA"
//! Activation_Status__c = "Activating"
//! [[whmcs.clients]]
//! id = 42
//! [[run]]
//! event = { OrderId__c = "801000000000001AAA" }
//! [run.expect]
//! result = "failed"
//! code = "409"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{FakeHost, Injection, TestKit, soql_object, test_uuid};
use crate::domain::Event;
use crate::fake::FakeOrg;
use crate::fake::whmcs::{FakeClient, FakeOrder, FakeProduct, FakeWhmcs};
use crate::runtime::{CallRecord, Disposition, JobReport};

/// Records to seed, by sObject.
pub type Records = BTreeMap<String, Vec<Map<String, Value>>>;
/// Field values by sObject and record id.
pub type FieldsById = BTreeMap<String, BTreeMap<String, Map<String, Value>>>;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A seed file (path relative to this file) whose `config`, `org` and `whmcs` are loaded
    /// first, so many scenarios share one fixture org. By convention its name starts with `_`.
    #[serde(default)]
    pub seed: Option<String>,
    /// Settings the `config` import exposes (e.g. `PORTAL_PRICEBOOK_ID`).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// The fake clock, ms since the Unix epoch (default 2026-01-01T00:00:00Z).
    #[serde(default)]
    pub now_ms: Option<i64>,
    /// Fields of the org beyond the shipped package, `"Object.Field" = "Type"` (e.g.
    /// `"Order.Service_Tier__c" = "Text(40)"`; see [`crate::fake::schema::Schema::declare`]).
    #[serde(default)]
    pub schema: BTreeMap<String, String>,
    /// Records of the fake org, by sObject (`[[org.Order]]`, `[[org.OrderItem]]`, ...).
    #[serde(default)]
    pub org: Records,
    #[serde(default)]
    pub whmcs: WhmcsSeed,
    /// The runs, in order, against the same fakes.
    #[serde(rename = "run")]
    pub runs: Vec<Run>,
    /// The org's schema before `schema` is added (not read from the file): the shipped package
    /// when `None`; `fulfilld test --salesforce-package` sets it.
    #[serde(skip)]
    pub base_schema: Option<crate::fake::Schema>,
}

/// A shared seed file: the data keys of a scenario, without runs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedFile {
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub now_ms: Option<i64>,
    #[serde(default)]
    pub schema: BTreeMap<String, String>,
    #[serde(default)]
    pub org: Records,
    #[serde(default)]
    pub whmcs: WhmcsSeed,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhmcsSeed {
    #[serde(default)]
    pub clients: Vec<FakeClient>,
    #[serde(default)]
    pub products: Vec<FakeProduct>,
    /// The id the next AddOrder gets.
    #[serde(default)]
    pub next_order_id: Option<u64>,
    /// Orders that already exist (e.g. one left Pending by an earlier attempt).
    #[serde(default)]
    pub orders: Vec<FakeOrder>,
    /// The WHMCS version the fake behaves as (default [`crate::fake::whmcs::DEFAULT_VERSION`]);
    /// before 8.12 AddOrder ignores `qty[]`.
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// Shown in reports (default `run N`).
    #[serde(default)]
    pub name: Option<String>,
    /// The event's payload fields, e.g. `{ OrderId__c = "801..." }`.
    pub event: Map<String, Value>,
    /// The event's EventUuid (default: derived from the scenario name and run number).
    #[serde(default)]
    pub event_uuid: Option<String>,
    /// The job's delivery count as `job.delivery` reports it (default 1); 2 or more runs the
    /// job as one handed out again after an earlier run died.
    #[serde(default)]
    pub delivery: Option<u32>,
    /// Field updates applied to the org before this run (an operator resetting a status);
    /// `""` clears a field.
    #[serde(default)]
    pub set: FieldsById,
    /// Failures injected for this run only.
    #[serde(default)]
    pub inject: Vec<Injection>,
    pub expect: Expect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectedResult {
    Completed,
    Skipped,
    Failed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub result: ExpectedResult,
    /// The failure code (with `result = "failed"`).
    #[serde(default)]
    pub code: Option<String>,
    /// The exact failure or outcome message.
    #[serde(default)]
    pub message: Option<String>,
    /// Substrings the failure or outcome message must contain.
    #[serde(default)]
    pub message_contains: Vec<String>,
    /// The exact sequence of import calls, as `op target` (`billing.call AddOrder`,
    /// `salesforce.update Order`, `salesforce.query OrderItem`); an entry without a target
    /// matches any target of that op. Log, config and clock calls are not listed.
    #[serde(default)]
    pub calls: Option<Vec<String>>,
    /// Calls that must appear, in this order, among others.
    #[serde(default)]
    pub calls_include: Vec<String>,
    /// Calls that must not appear.
    #[serde(default)]
    pub calls_exclude: Vec<String>,
    /// No `salesforce.update` at all.
    #[serde(default)]
    pub no_writes: bool,
    /// Step names that must be logged, in this order, among others.
    #[serde(default)]
    pub steps: Vec<String>,
    /// Substrings that must each appear in some log entry (message or fields).
    #[serde(default)]
    pub logs_contain: Vec<String>,
    /// Field values records must have after the run (`""`: empty, as Salesforce has it).
    #[serde(default)]
    pub records: FieldsById,
    /// How many orders the fake WHMCS holds after the run.
    #[serde(default)]
    pub whmcs_orders: Option<usize>,
    /// WHMCS calls with their parameters: the k-th entry for an action is compared with the
    /// k-th call of that action the component made.
    #[serde(default)]
    pub whmcs_calls: Vec<WhmcsCallExpectation>,
    /// Salesforce writes with their values: the k-th entry for an sObject is compared with the
    /// k-th `salesforce.update` of that sObject.
    #[serde(default)]
    pub sf_updates: Vec<SfUpdateExpectation>,
}

/// `[[run.expect.whmcs_calls]]`: one WHMCS call and some of its parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhmcsCallExpectation {
    /// The WHMCS action (`AddOrder`).
    pub action: String,
    /// Parameters the call must have sent, compared as WHMCS receives them (`pid = [1, 2]` is
    /// `pid[0]=1`, `pid[1]=2`, and no `pid[2]`; `"pid[1]" = 2` checks one line). Parameters not
    /// listed are not checked.
    #[serde(default)]
    pub params: Map<String, Value>,
}

/// `[[run.expect.sf_updates]]`: one Salesforce write and some of its values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SfUpdateExpectation {
    /// The updated sObject (`Order`).
    pub sobject: String,
    /// The updated record's Id (not checked when absent).
    #[serde(default)]
    pub id: Option<String>,
    /// Fields the write must have set, with these values (`""` matches a field cleared to null
    /// or the empty string). Fields not listed are not checked.
    #[serde(default)]
    pub fields: Map<String, Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Scenario {
    /// Loads a scenario that came from outside (a suite shipped with a deploy): its seed must be a
    /// file inside `root`, named by a relative path without `..` and not a link, and no error
    /// quotes the seed's content. Without this a scenario could name any host file
    /// (`seed = "/proc/self/environ"`) and the gate's answer would quote it.
    pub fn load_within(path: &Path, root: &Path) -> Result<Scenario, ScenarioError> {
        let shown = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: shown(path),
            source,
        })?;
        let mut scenario = Scenario::parse(&text).map_err(|message| ScenarioError::Invalid {
            path: shown(path),
            message,
        })?;
        if let Some(seed) = scenario.seed.clone() {
            let invalid = |message: String| ScenarioError::Invalid {
                path: shown(path),
                message,
            };
            let seed_path = confined_seed(root, &seed).map_err(invalid)?;
            let seed_text = std::fs::read_to_string(&seed_path).map_err(|source| {
                invalid(format!("seed {seed:?} cannot be read: {}", source.kind()))
            })?;
            let seed_file: SeedFile = toml::from_str(&seed_text).map_err(|e| {
                invalid(format!(
                    "seed {seed:?}, {}",
                    crate::error::toml_error(&seed_text, &e)
                ))
            })?;
            scenario.merge_seed(seed_file);
        }
        Ok(scenario)
    }

    /// Parses and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let invalid = |message: String| ScenarioError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let mut scenario = Scenario::parse(&text).map_err(invalid)?;
        if let Some(seed) = scenario.seed.clone() {
            let seed_path = path.parent().unwrap_or(Path::new(".")).join(&seed);
            let seed_text =
                std::fs::read_to_string(&seed_path).map_err(|source| ScenarioError::Read {
                    path: seed_path.display().to_string(),
                    source,
                })?;
            let seed: SeedFile =
                toml::from_str(&seed_text).map_err(|e| ScenarioError::Invalid {
                    path: seed_path.display().to_string(),
                    message: e.to_string(),
                })?;
            scenario.merge_seed(seed);
        }
        Ok(scenario)
    }

    /// Puts `seed` under this scenario's own data: its records come first, own settings win.
    pub fn merge_seed(&mut self, seed: SeedFile) {
        for (key, value) in seed.config {
            self.config.entry(key).or_insert(value);
        }
        self.now_ms = self.now_ms.or(seed.now_ms);
        for (field, spec) in seed.schema {
            self.schema.entry(field).or_insert(spec);
        }
        for (sobject, mut records) in seed.org {
            let own = self.org.remove(&sobject).unwrap_or_default();
            records.extend(own);
            self.org.insert(sobject, records);
        }
        let mut whmcs = seed.whmcs;
        whmcs.clients.append(&mut self.whmcs.clients);
        whmcs.products.append(&mut self.whmcs.products);
        whmcs.orders.append(&mut self.whmcs.orders);
        whmcs.next_order_id = self.whmcs.next_order_id.or(whmcs.next_order_id);
        whmcs.version = self.whmcs.version.take().or(whmcs.version);
        self.whmcs = whmcs;
    }

    pub fn parse(text: &str) -> Result<Scenario, String> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        if scenario.runs.is_empty() {
            return Err("a scenario needs at least one [[run]]".into());
        }
        for (index, run) in scenario.runs.iter().enumerate() {
            for injection in &run.inject {
                injection
                    .validate()
                    .map_err(|e| format!("run {}: inject: {e}", index + 1))?;
            }
            let failed = run.expect.result == ExpectedResult::Failed;
            if run.expect.code.is_some() && !failed {
                return Err(format!(
                    "run {}: expect.code only applies to result = \"failed\"",
                    index + 1
                ));
            }
        }
        Ok(scenario)
    }

    /// A fake host seeded with this scenario's org, WHMCS, settings and clock.
    pub fn seed(&self) -> Result<Arc<FakeHost>, String> {
        let host = FakeHost::new();
        for (key, value) in &self.config {
            host.set_config(key.clone(), value.clone());
        }
        if let Some(now) = self.now_ms {
            host.set_now_ms(now);
        }
        host.with_org(|org| {
            if let Some(base) = &self.base_schema {
                *org.schema_mut() = base.clone();
            }
            apply_schema(&self.schema, org)?;
            seed_org(&self.org, org)
        })?;
        host.with_whmcs(|whmcs| seed_whmcs(&self.whmcs, whmcs));
        Ok(host)
    }
}

/// The file `seed` names inside `root`: a relative path of plain names (no absolute path, no
/// `..` or `.`), to a regular file that is not a link and, once resolved, still inside `root`.
fn confined_seed(root: &Path, seed: &str) -> Result<PathBuf, String> {
    use std::path::Component;
    let relative = Path::new(seed);
    if seed.is_empty()
        || !relative
            .components()
            .all(|part| matches!(part, Component::Normal(_)))
    {
        return Err(format!(
            "seed {seed:?} must be a relative path inside the scenario suite (no absolute path, no `..`)"
        ));
    }
    let path = root.join(relative);
    let outside = || format!("seed {seed:?} is not a file inside the scenario suite");
    let meta = std::fs::symlink_metadata(&path).map_err(|_| outside())?;
    if !meta.file_type().is_file() {
        return Err(format!(
            "seed {seed:?} must be a plain file (links are refused)"
        ));
    }
    let resolved = path.canonicalize().map_err(|_| outside())?;
    let root = root.canonicalize().map_err(|_| outside())?;
    if !resolved.starts_with(&root) {
        return Err(outside());
    }
    Ok(resolved)
}

/// The scenario files `paths` stand for: a directory stands for the `*.toml` files in it, sorted,
/// except `_*.toml` (shared seed data such as `_seed.toml`). On failure, the directory that
/// could not be listed and why.
pub fn scenario_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, (PathBuf, std::io::Error)> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| (path.clone(), e))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .filter(|p| {
                    !p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('_'))
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Adds a scenario's or seed's `[schema]` fields to a fake org's schema.
pub fn apply_schema(schema: &BTreeMap<String, String>, org: &mut FakeOrg) -> Result<(), String> {
    for (field, spec) in schema {
        org.schema_mut()
            .declare(field, spec)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Loads seed records into a fake org (scenarios, and the sandbox's admin API).
pub fn seed_org(records: &Records, org: &mut FakeOrg) -> Result<(), String> {
    for (sobject, records) in records {
        for record in records {
            org.insert(sobject, record.clone())
                .map_err(|e| format!("org.{sobject}: {}", e.message))?;
        }
    }
    Ok(())
}

/// Loads seed clients, products and orders into a fake WHMCS.
pub fn seed_whmcs(seed: &WhmcsSeed, whmcs: &mut FakeWhmcs) {
    for client in &seed.clients {
        whmcs.add_client(client.clone());
    }
    for product in &seed.products {
        whmcs.add_product(product.clone());
    }
    for order in &seed.orders {
        whmcs.add_order(order.clone());
    }
    if let Some(id) = seed.next_order_id {
        whmcs.set_next_order_id(id);
    }
    if let Some(version) = &seed.version {
        whmcs.set_version(version);
    }
}

/// One finished run: what happened and what differed from the expectation.
#[derive(Debug)]
pub struct RunResult {
    pub name: String,
    pub report: JobReport,
    pub differences: Vec<String>,
}

/// A finished scenario.
#[derive(Debug)]
pub struct ScenarioResult {
    pub name: String,
    pub runs: Vec<RunResult>,
    /// Set when the scenario could not be set up (bad seed data).
    pub setup_error: Option<String>,
}

impl ScenarioResult {
    pub fn passed(&self) -> bool {
        self.setup_error.is_none() && self.runs.iter().all(|r| r.differences.is_empty())
    }

    /// The first difference, prefixed with its run's name.
    pub fn first_difference(&self) -> Option<String> {
        if let Some(error) = &self.setup_error {
            return Some(format!("setup: {error}"));
        }
        self.runs.iter().find_map(|run| {
            run.differences
                .first()
                .map(|difference| format!("{}: {difference}", run.name))
        })
    }
}

/// Runs every run of `scenario` against one freshly seeded fake host.
pub async fn run_scenario(kit: &TestKit, scenario: &Scenario) -> ScenarioResult {
    let mut result = ScenarioResult {
        name: scenario.name.clone(),
        runs: Vec::new(),
        setup_error: None,
    };
    let host = match scenario.seed() {
        Ok(host) => host,
        Err(error) => {
            result.setup_error = Some(error);
            return result;
        }
    };
    for (index, run) in scenario.runs.iter().enumerate() {
        let name = run
            .name
            .clone()
            .unwrap_or_else(|| format!("run {}", index + 1));
        if let Err(error) = apply_set(&host, &run.set) {
            result.setup_error = Some(format!("{name}: set: {error}"));
            return result;
        }
        host.clear_injections();
        for injection in &run.inject {
            host.inject(injection.clone());
        }
        let event = Event {
            event_uuid: run
                .event_uuid
                .clone()
                .unwrap_or_else(|| test_uuid(&format!("{}#{index}", scenario.name))),
            replay_id: (index + 1).to_string(),
            schema_id: "scenario".into(),
            channel: "/event/OrderProvisionRequested__e".into(),
            created_date: host_now(&host),
            payload: run.event.clone(),
            trace_parent: None,
        };
        let report = kit
            .fulfill_delivery(&host, &event, run.delivery.unwrap_or(1).max(1))
            .await;
        let differences = compare(&run.expect, &report, &host);
        result.runs.push(RunResult {
            name,
            report,
            differences,
        });
    }
    host.clear_injections();
    result
}

fn host_now(host: &FakeHost) -> i64 {
    crate::services::Services::now_ms(host)
}

fn apply_set(host: &FakeHost, set: &FieldsById) -> Result<(), String> {
    host.with_org(|org| {
        for (sobject, records) in set {
            for (id, fields) in records {
                // TOML has no null; like Salesforce, an empty string clears a field.
                let fields: Map<String, Value> = fields
                    .iter()
                    .map(|(k, v)| match v {
                        Value::String(s) if s.is_empty() => (k.clone(), Value::Null),
                        _ => (k.clone(), v.clone()),
                    })
                    .collect();
                org.update(sobject, id, &fields)
                    .map_err(|e| format!("{sobject}/{id}: {}", e.message))?;
            }
        }
        Ok(())
    })
}

/// `op target` label of a recorded call, as scenario files spell it.
pub fn call_label(call: &CallRecord) -> String {
    let target = match call.op {
        "salesforce.query" => soql_object(&call.target).unwrap_or_default(),
        "salesforce.update" => call
            .target
            .split_once('/')
            .map(|(sobject, _)| sobject.to_owned())
            .unwrap_or_default(),
        _ => call.target.clone(),
    };
    format!("{} {target}", call.op)
}

fn label_matches(expected: &str, actual: &str) -> bool {
    if expected.contains(' ') {
        expected.eq_ignore_ascii_case(actual)
    } else {
        actual.split(' ').next() == Some(expected)
    }
}

/// Every way `report` differs from `expect`, most important first.
pub fn compare(expect: &Expect, report: &JobReport, host: &FakeHost) -> Vec<String> {
    let mut out = Vec::new();
    let (actual_result, code, message) = match &report.result {
        Ok(outcome) => (
            match outcome.disposition {
                Disposition::Completed => ExpectedResult::Completed,
                Disposition::Skipped => ExpectedResult::Skipped,
            },
            None,
            outcome.message.as_str(),
        ),
        Err(failure) => (
            ExpectedResult::Failed,
            Some(failure.code.as_str()),
            failure.message.as_str(),
        ),
    };
    if actual_result != expect.result {
        out.push(format!(
            "result: expected {:?}, got {:?}{} \"{message}\"",
            expect.result,
            actual_result,
            code.map(|c| format!(" {c}")).unwrap_or_default()
        ));
    }
    if let Some(expected) = &expect.code
        && code != Some(expected.as_str())
    {
        out.push(format!(
            "code: expected {expected}, got {} (\"{message}\")",
            code.unwrap_or("none")
        ));
    }
    if let Some(expected) = &expect.message
        && expected != message
    {
        out.push(format!(
            "message: expected \"{expected}\", got \"{message}\""
        ));
    }
    for part in &expect.message_contains {
        if !message.contains(part.as_str()) {
            out.push(format!(
                "message: \"{message}\" does not contain \"{part}\""
            ));
        }
    }

    let journal = report.journal.clone().unwrap_or_default();
    let labels: Vec<String> = journal.calls.iter().map(call_label).collect();
    if let Some(expected) = &expect.calls {
        let position = expected
            .iter()
            .zip(&labels)
            .position(|(e, a)| !label_matches(e, a));
        let mismatch = position
            .or_else(|| (expected.len() != labels.len()).then(|| expected.len().min(labels.len())));
        if let Some(i) = mismatch {
            out.push(format!(
                "calls[{i}]: expected {}, got {} (calls: {})",
                expected
                    .get(i)
                    .map_or("no more calls".into(), |e| format!("\"{e}\"")),
                labels
                    .get(i)
                    .map_or("no more calls".into(), |a| format!("\"{a}\"")),
                labels.join(", ")
            ));
        }
    }
    let mut next = 0;
    for wanted in &expect.calls_include {
        match labels[next..].iter().position(|a| label_matches(wanted, a)) {
            Some(offset) => next += offset + 1,
            None => out.push(format!(
                "calls: \"{wanted}\" missing (in order) from: {}",
                labels.join(", ")
            )),
        }
    }
    for unwanted in &expect.calls_exclude {
        if labels.iter().any(|a| label_matches(unwanted, a)) {
            out.push(format!("calls: \"{unwanted}\" made, expected not to be"));
        }
    }
    if expect.no_writes
        && let Some(write) = journal.calls.iter().find(|c| c.op == "salesforce.update")
    {
        out.push(format!(
            "no_writes: the component wrote {} {}",
            write.target,
            write
                .request
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_default()
        ));
    }

    let steps: Vec<&str> = journal.logs.iter().map(|l| l.step.as_str()).collect();
    let mut next = 0;
    for wanted in &expect.steps {
        match steps[next..].iter().position(|s| s == wanted) {
            Some(offset) => next += offset + 1,
            None => out.push(format!(
                "steps: \"{wanted}\" not logged (in order); logged steps: {}",
                dedup(&steps).join(", ")
            )),
        }
    }
    for wanted in &expect.logs_contain {
        let found = journal.logs.iter().any(|l| {
            l.message.contains(wanted.as_str())
                || l.fields
                    .iter()
                    .any(|(k, v)| k.contains(wanted.as_str()) || v.contains(wanted.as_str()))
        });
        if !found {
            out.push(format!("logs: no entry contains \"{wanted}\""));
        }
    }

    host.with_org(|org| {
        for (sobject, records) in &expect.records {
            for (id, fields) in records {
                let Some(record) = org.get(sobject, id) else {
                    out.push(format!("records: {sobject}/{id} does not exist"));
                    continue;
                };
                for (field, expected) in fields {
                    let actual = record.get(field).unwrap_or(&Value::Null);
                    if !same_value(expected, actual) {
                        out.push(format!(
                            "records: {sobject}/{id}.{field}: expected {expected}, got {actual}"
                        ));
                    }
                }
            }
        }
    });
    if let Some(expected) = expect.whmcs_orders {
        let actual = host.with_whmcs(|whmcs| whmcs.orders().len());
        if actual != expected {
            out.push(format!("whmcs_orders: expected {expected}, got {actual}"));
        }
    }
    out.extend(compare_whmcs_calls(&expect.whmcs_calls, &journal.calls));
    out.extend(compare_sf_updates(&expect.sf_updates, &journal.calls));
    out
}

/// Longest rendering of what a call actually sent, in a difference.
const SENT_SHOWN: usize = 300;

/// The k-th call among `calls` that `is_one` picks, and how many there were.
fn kth_call(
    calls: &[CallRecord],
    k: usize,
    is_one: impl Fn(&CallRecord) -> bool,
) -> (Option<&CallRecord>, usize) {
    let mut picked = calls.iter().filter(|call| is_one(call));
    let found = picked.nth(k);
    let count = k + usize::from(found.is_some()) + picked.count();
    (found, count)
}

/// `1st`, `2nd`, `3rd`, `4th`, ...
fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// Every way the WHMCS calls differ from `expected`: one entry per expectation that failed.
pub fn compare_whmcs_calls(expected: &[WhmcsCallExpectation], calls: &[CallRecord]) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (index, wanted) in expected.iter().enumerate() {
        let k = seen.entry(wanted.action.to_ascii_lowercase()).or_insert(0);
        let nth = *k;
        *k += 1;
        let (call, count) = kth_call(calls, nth, |call| {
            call.op == "billing.call" && call.target.eq_ignore_ascii_case(&wanted.action)
        });
        let label = format!(
            "whmcs_calls[{index}] ({} {})",
            ordinal(nth + 1),
            wanted.action
        );
        let Some(call) = call else {
            out.push(format!(
                "{label}: expected a {} {} call, the component made {count}",
                ordinal(nth + 1),
                wanted.action
            ));
            continue;
        };
        let sent = form_pairs(call.request.as_ref());
        let mut problems = Vec::new();
        for (key, value) in &wanted.params {
            let mut want = crate::whmcs::form_pairs(key, value);
            if want.is_empty() {
                // `""` or an empty list: the parameter must not carry a value.
                want.push((key.clone(), String::new()));
            }
            for (name, expected) in &want {
                let actual = sent.iter().find(|(k, _)| k == name).map(|(_, v)| v);
                match actual {
                    Some(actual) if actual == expected => {}
                    None if expected.is_empty() => {}
                    Some(actual) => {
                        problems.push(format!("{name}: expected {expected:?}, sent {actual:?}"))
                    }
                    None => problems.push(format!("{name}: expected {expected:?}, not sent")),
                }
            }
            // A list is the whole list: no lines beyond the expected ones.
            if let Value::Array(items) = value {
                let lines = sent_indices(&sent, key);
                if lines > items.len() {
                    problems.push(format!(
                        "{key}: expected {} entries, sent {lines}",
                        items.len()
                    ));
                }
            }
        }
        if !problems.is_empty() {
            let rendered: Vec<String> = sent.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push(format!(
                "{label}: {} (sent: {})",
                problems.join("; "),
                bounded(&rendered.join(" "))
            ));
        }
    }
    out
}

/// Every way the Salesforce writes differ from `expected`: one entry per expectation that
/// failed.
pub fn compare_sf_updates(expected: &[SfUpdateExpectation], calls: &[CallRecord]) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (index, wanted) in expected.iter().enumerate() {
        let k = seen.entry(wanted.sobject.to_ascii_lowercase()).or_insert(0);
        let nth = *k;
        *k += 1;
        let (call, count) = kth_call(calls, nth, |call| {
            call.op == "salesforce.update"
                && call
                    .target
                    .split_once('/')
                    .is_some_and(|(sobject, _)| sobject.eq_ignore_ascii_case(&wanted.sobject))
        });
        let label = format!(
            "sf_updates[{index}] ({} {} update)",
            ordinal(nth + 1),
            wanted.sobject
        );
        let Some(call) = call else {
            out.push(format!(
                "{label}: expected a {} update of {}, the component made {count}",
                ordinal(nth + 1),
                wanted.sobject
            ));
            continue;
        };
        let id = call.target.split_once('/').map_or("", |(_, id)| id);
        let mut problems = Vec::new();
        if let Some(want) = &wanted.id
            && !same_id(want, id)
        {
            problems.push(format!("id: expected {want:?}, sent {id:?}"));
        }
        let sent = match &call.request {
            Some(Value::Object(fields)) => fields.clone(),
            _ => Map::new(),
        };
        for (field, expected) in &wanted.fields {
            match sent.get(field) {
                Some(actual) if same_value(expected, actual) => {}
                Some(actual) => {
                    problems.push(format!("{field}: expected {expected}, sent {actual}"))
                }
                None => problems.push(format!("{field}: expected {expected}, not sent")),
            }
        }
        if !problems.is_empty() {
            out.push(format!(
                "{label}: {} (sent: {} {})",
                problems.join("; "),
                call.target,
                bounded(&Value::Object(sent).to_string())
            ));
        }
    }
    out
}

/// A record Id as Salesforce compares them: the 15-character form matches the 18.
fn same_id(expected: &str, actual: &str) -> bool {
    crate::runtime::policy::same_record_id(expected, actual)
}

/// The parameters of a billing call as WHMCS receives them (`pid[0]=1`): the host's own
/// encoding. A call the encoding refuses (a bad parameter name) sent nothing.
fn form_pairs(request: Option<&Value>) -> Vec<(String, String)> {
    match request {
        Some(Value::Object(params)) => crate::whmcs::encode_params(params).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// How many entries of the list `key` were sent (`key[0]`, `key[1]`, ...).
fn sent_indices(sent: &[(String, String)], key: &str) -> usize {
    let prefix = format!("{key}[");
    let mut indices: Vec<usize> = sent
        .iter()
        .filter_map(|(name, _)| name.strip_prefix(prefix.as_str()))
        .filter_map(|rest| rest.split_once(']'))
        .filter_map(|(index, _)| index.parse().ok())
        .collect();
    indices.sort_unstable();
    indices.dedup();
    indices.len()
}

/// `text` cut to [`SENT_SHOWN`] bytes (at a character boundary), with `…` when cut.
fn bounded(text: &str) -> String {
    crate::domain::clip(text, SENT_SHOWN)
}

/// Field comparison as an operator reads it: `"1042"` equals `1042`; `""` (TOML has no null)
/// equals null or absent, as in Salesforce.
fn same_value(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::String(e), Value::Null) => e.is_empty(),
        (Value::String(e), Value::String(a)) if e.is_empty() => a.is_empty(),
        (Value::String(e), Value::Number(a)) | (Value::Number(a), Value::String(e)) => {
            *e == a.to_string()
        }
        _ => expected == actual,
    }
}

fn dedup<'a>(steps: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for step in steps {
        if out.last() != Some(step) {
            out.push(step);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_unknown_keys_and_bad_injections() {
        let err = Scenario::parse(
            "name = \"x\"\nnmae = 1\n[[run]]\nevent = {}\n[run.expect]\nresult = \"completed\"\n",
        )
        .unwrap_err();
        assert!(err.contains("nmae"), "{err}");
        let err = Scenario::parse(
            "name = \"x\"\n[[run]]\nevent = {}\n[[run.inject]]\nop = \"billing.call\"\n[run.expect]\nresult = \"failed\"\n",
        )
        .unwrap_err();
        assert!(err.contains("needs one of"), "{err}");
        let err = Scenario::parse("name = \"x\"\n").unwrap_err();
        assert!(err.contains("run"), "{err}");
    }

    #[test]
    fn labels_match_with_or_without_target() {
        assert!(label_matches("billing.call", "billing.call AddOrder"));
        assert!(label_matches(
            "billing.call AddOrder",
            "billing.call AddOrder"
        ));
        assert!(!label_matches(
            "billing.call AcceptOrder",
            "billing.call AddOrder"
        ));
        assert!(same_value(&Value::from("1042"), &Value::from(1042)));
    }

    #[test]
    fn a_confined_seed_stays_inside_its_suite() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("host.toml"), "secret = 1").unwrap();
        let root = tempfile::tempdir().unwrap();
        let suite = root.path();
        std::fs::create_dir(suite.join("data")).unwrap();
        std::fs::write(suite.join("data/_seed.toml"), "[config]").unwrap();
        assert!(confined_seed(suite, "data/_seed.toml").is_ok());
        let absolute = outside.path().join("host.toml").display().to_string();
        std::os::unix::fs::symlink(outside.path().join("host.toml"), suite.join("link.toml"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), suite.join("out")).unwrap();
        for (seed, says) in [
            (absolute.as_str(), "relative path"),
            ("../host.toml", "relative path"),
            ("data/../../host.toml", "relative path"),
            ("./data/_seed.toml", "relative path"),
            ("", "relative path"),
            ("link.toml", "links are refused"),
            ("out/host.toml", "not a file inside"),
            ("missing.toml", "not a file inside"),
            ("data", "links are refused"),
        ] {
            let error = confined_seed(suite, seed).unwrap_err();
            assert!(error.contains(says), "{seed:?}: {error}");
        }
    }

    #[test]
    fn a_confined_seed_that_is_not_toml_is_not_quoted() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("_seed.toml"), "TOKEN=abc-secret-123\n").unwrap();
        std::fs::write(
            root.path().join("s.toml"),
            "name = \"s\"\nseed = \"_seed.toml\"\n[[run]]\nevent = { OrderId__c = \"x\" }\n\
             [run.expect]\nresult = \"completed\"\n",
        )
        .unwrap();
        let error = Scenario::load_within(&root.path().join("s.toml"), root.path())
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("s.toml: seed \"_seed.toml\", line 1"),
            "{error}"
        );
        assert!(!error.contains("abc-secret-123"), "{error}");
    }

    fn billing(action: &str, params: Value) -> CallRecord {
        CallRecord {
            op: "billing.call",
            target: action.to_owned(),
            request: Some(params),
            result: Ok(Value::Null),
            duration_ms: 0,
            at_ms: 0,
        }
    }

    fn update(target: &str, fields: Value) -> CallRecord {
        CallRecord {
            op: "salesforce.update",
            target: target.to_owned(),
            request: Some(fields),
            result: Ok(Value::Null),
            duration_ms: 0,
            at_ms: 0,
        }
    }

    /// The `[run.expect]` of a scenario whose expectation tables are `tables`.
    fn expect_of(tables: &str) -> Result<Expect, String> {
        let text = format!(
            "name = \"x\"\n[[run]]\nevent = {{}}\n[run.expect]\nresult = \"completed\"\n{tables}"
        );
        Scenario::parse(&text).map(|s| s.runs[0].expect.clone())
    }

    fn add_order_calls() -> Vec<CallRecord> {
        vec![
            billing("GetPayMethods", serde_json::json!({ "clientid": "42" })),
            billing(
                "AddOrder",
                // In key order, as the host holds a JSON object from the component.
                serde_json::json!({
                    "billingcycle": ["monthly", "annually"],
                    "clientid": "42",
                    "noemail": true,
                    "paymentmethod": "stripe",
                    "pid": [11, 12],
                    "qty": [1, 2],
                }),
            ),
            billing("AcceptOrder", serde_json::json!({ "orderid": 1000 })),
            // A failed call counts among its action's calls like any other.
            CallRecord {
                result: Err(crate::error::CallError::timeout("no answer")),
                ..billing(
                    "AddOrder",
                    serde_json::json!({ "clientid": 42, "pid": [13] }),
                )
            },
        ]
    }

    #[test]
    fn whmcs_call_expectations_match_listed_params_as_whmcs_receives_them() {
        let expect = expect_of(
            "[[run.expect.whmcs_calls]]\naction = \"AddOrder\"\n\
             params = { clientid = 42, paymentmethod = \"stripe\", pid = [11, 12], \
             billingcycle = [\"monthly\", \"annually\"], \"qty[1]\" = \"2\", noemail = true }\n\
             [[run.expect.whmcs_calls]]\naction = \"AcceptOrder\"\nparams = { orderid = \"1000\" }\n\
             [[run.expect.whmcs_calls]]\naction = \"addorder\"\nparams = { pid = [13], promocode = \"\" }\n",
        )
        .unwrap();
        let differences = compare_whmcs_calls(&expect.whmcs_calls, &add_order_calls());
        assert!(differences.is_empty(), "{differences:?}");
    }

    #[test]
    fn a_whmcs_call_difference_names_expectation_key_values_and_what_was_sent() {
        let expect = expect_of(
            "[[run.expect.whmcs_calls]]\naction = \"AddOrder\"\n\
             params = { clientid = 42, billingcycle = [\"monthly\", \"monthly\"], qty = [1], promocode = \"X\" }\n",
        )
        .unwrap();
        let differences = compare_whmcs_calls(&expect.whmcs_calls, &add_order_calls());
        assert_eq!(
            differences,
            vec![
                "whmcs_calls[0] (1st AddOrder): billingcycle[1]: expected \"monthly\", sent \"annually\"; \
                 promocode: expected \"X\", not sent; qty: expected 1 entries, sent 2 \
                 (sent: billingcycle[0]=monthly billingcycle[1]=annually clientid=42 noemail=1 \
                 paymentmethod=stripe pid[0]=11 pid[1]=12 qty[0]=1 qty[1]=2)"
                    .to_owned()
            ]
        );

        // A third AddOrder that never happened, counted among AddOrders only.
        let expect = expect_of(
            "[[run.expect.whmcs_calls]]\naction = \"AddOrder\"\n\
             [[run.expect.whmcs_calls]]\naction = \"AddOrder\"\n\
             [[run.expect.whmcs_calls]]\naction = \"AddOrder\"\n",
        )
        .unwrap();
        assert_eq!(
            compare_whmcs_calls(&expect.whmcs_calls, &add_order_calls()),
            vec![
                "whmcs_calls[2] (3rd AddOrder): expected a 3rd AddOrder call, the component made 2"
            ]
        );
    }

    #[test]
    fn what_was_sent_is_shown_bounded() {
        let long = "x".repeat(1000);
        let calls = vec![billing("AddOrder", serde_json::json!({ "notes": long }))];
        let expect = expect_of(
            "[[run.expect.whmcs_calls]]\naction = \"AddOrder\"\nparams = { clientid = 1 }\n",
        )
        .unwrap();
        let difference = compare_whmcs_calls(&expect.whmcs_calls, &calls).remove(0);
        assert!(difference.ends_with("xxx…)"), "{difference}");
        let sent = difference.split_once("(sent: ").unwrap().1;
        assert_eq!(sent.len(), SENT_SHOWN + "…)".len(), "{difference}");
    }

    #[test]
    fn sf_update_expectations_match_in_order_among_updates_of_the_sobject() {
        let calls = vec![
            update(
                "Order/801000000000001AAA",
                serde_json::json!({ "Activation_Status__c": "Activating", "Activation_Error_Code__c": null }),
            ),
            update(
                "Account/001000000000001AAA",
                serde_json::json!({ "Note__c": "x" }),
            ),
            update(
                "Order/801000000000001AAA",
                serde_json::json!({ "Activation_Status__c": "Activated", "WHMCS_Order_ID__c": "1000" }),
            ),
        ];
        let expect = expect_of(
            "[[run.expect.sf_updates]]\nsobject = \"Order\"\nid = \"801000000000001\"\n\
             fields = { Activation_Status__c = \"Activating\", Activation_Error_Code__c = \"\" }\n\
             [[run.expect.sf_updates]]\nsobject = \"Account\"\n\
             [[run.expect.sf_updates]]\nsobject = \"Order\"\nfields = { WHMCS_Order_ID__c = 1000 }\n",
        )
        .unwrap();
        let differences = compare_sf_updates(&expect.sf_updates, &calls);
        assert!(differences.is_empty(), "{differences:?}");

        let expect = expect_of(
            "[[run.expect.sf_updates]]\nsobject = \"Order\"\n\
             [[run.expect.sf_updates]]\nsobject = \"Order\"\nid = \"801000000000009AAA\"\n\
             fields = { Activation_Status__c = \"Failed\", Activation_Error_Code__c = \"409\" }\n\
             [[run.expect.sf_updates]]\nsobject = \"Order\"\n",
        )
        .unwrap();
        assert_eq!(
            compare_sf_updates(&expect.sf_updates, &calls),
            vec![
                "sf_updates[1] (2nd Order update): id: expected \"801000000000009AAA\", sent \
                 \"801000000000001AAA\"; Activation_Error_Code__c: expected \"409\", not sent; \
                 Activation_Status__c: expected \"Failed\", sent \"Activated\" (sent: Order/801000000000001AAA \
                 {\"Activation_Status__c\":\"Activated\",\"WHMCS_Order_ID__c\":\"1000\"})"
                    .to_owned(),
                "sf_updates[2] (3rd Order update): expected a 3rd update of Order, the component made 2"
                    .to_owned(),
            ]
        );
    }

    #[test]
    fn unknown_keys_in_call_and_write_expectations_are_refused_by_line() {
        let error = expect_of(
            "[[run.expect.whmcs_calls]]\naction = \"AddOrder\"\nparmas = { clientid = 42 }\n",
        )
        .unwrap_err();
        assert!(
            error.contains("line 8") && error.contains("parmas"),
            "{error}"
        );
        let error =
            expect_of("[[run.expect.sf_updates]]\nsobject = \"Order\"\nvalues = { A = 1 }\n")
                .unwrap_err();
        assert!(
            error.contains("line 8") && error.contains("values"),
            "{error}"
        );
        let error = expect_of("[[run.expect.sf_updates]]\nfields = { A = 1 }\n").unwrap_err();
        assert!(error.contains("sobject"), "{error}");
    }
}
