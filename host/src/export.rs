//! `fulfilld orders export <id> --scenario file.toml`: the last run of a production job as one
//! self-contained scenario file, so `fulfilld test` replays it against any component version.
//!
//! The seed comes from what the job journal captured (`FULFILLD_JOURNAL_CAPTURE`):
//! - every record of every Salesforce query answer becomes a record of the fake org (nested
//!   parents such as `Account` and child subquery records such as `OrderItems.records`
//!   included), linked as they were: a parent without an `Id` takes the child's lookup value (or
//!   the Id in its `attributes.url`, or a stand-in id), child records get their parent lookup,
//!   and records of a top-level query get the fields its `WHERE a = 'x' AND ...` names, so the
//!   replayed query finds them. Fields the shipped package lacks are declared in `[schema]`.
//!   When a record is read twice, the first answer wins: the seed is the state at the start of
//!   the run;
//! - the WHMCS answers become the fake WHMCS: clients (GetClientsDetails, GetPayMethods),
//!   products (the pids AddOrder sent, named from the Product2 records; GetProducts), existing
//!   orders (GetOrders, except the one this run created), the next order id (AddOrder's answer)
//!   and the version (WhmcsDetails, else the `WHMCS_VERSION` setting).
//!
//! Every call that failed in the recording is injected at the same call (op, target, nth). The
//! expectations are the recorded result and code, the exact call sequence and the lines each
//! AddOrder sent. What a replay cannot reproduce is written into the scenario's description.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{CallError, ErrorKind};
use crate::fake::Schema;
use crate::fake::whmcs::{FakeClient, FakeOrder, FakeOrderItem, FakePayMethod, FakeProduct};
use crate::pipeline::journal::JobView;
use crate::runtime::CallRecord;
use crate::store::{JournalEntry, JournalEvent};
use crate::testkit::scenario::{Scenario, call_label};
use crate::testkit::{INJECTABLE_OPS, soql_object};

/// Why a job cannot be exported as a scenario.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The run's calls are journaled without their answers.
    #[error(
        "job {0} ran with FULFILLD_JOURNAL_CAPTURE off: its journal names the calls but not \
         their answers, so there is nothing to seed a scenario from; switch capture on \
         (docs/operations.md) and run the Order again"
    )]
    NotCaptured(String),
    /// The journal holds no run of the job.
    #[error(
        "job {0} has no run in its journal (it was never handed to a worker, or its journal is \
         past FULFILLD_JOURNAL_RETENTION_HOURS): there is nothing to export"
    )]
    NothingToExport(String),
    /// The last run ended without an outcome a scenario could expect.
    #[error(
        "job {event_uuid}: its last run (delivery {delivery}) {why}, so there is no outcome to \
         expect; export a job whose last run completed, was skipped or failed"
    )]
    NoOutcome {
        event_uuid: String,
        delivery: u32,
        why: String,
    },
    /// A captured body the seed needs was over the journal's bound and replaced by a note.
    #[error(
        "job {event_uuid}: the captured {what} of call {index} ({label}) was over the journal's \
         {limit} bytes and not kept, so the scenario cannot be seeded from it",
        limit = crate::store::journal::MAX_CAPTURED_BODY
    )]
    NotKept {
        event_uuid: String,
        index: usize,
        label: String,
        what: &'static str,
    },
    /// The recording holds something the test kit's fakes cannot stand in for.
    #[error("job {event_uuid}: {what}; the test kit's fake org cannot stand in for it")]
    Unsupported { event_uuid: String, what: String },
    #[error("job {event_uuid}: cannot write the scenario as TOML")]
    Render {
        event_uuid: String,
        #[source]
        source: toml::ser::Error,
    },
    /// The scenario written does not load: a defect of the export, not of the job.
    #[error(
        "job {event_uuid}: the exported scenario does not load ({message}); this is a defect of \
         the export: report it with the output of `fulfilld orders show {event_uuid}`"
    )]
    Invalid { event_uuid: String, message: String },
}

/// The TOML text of one self-contained scenario (no `seed = ` include) replaying the last run of
/// `job`, with `config` as its `[config]` (the component-visible settings).
pub fn scenario_from_job(
    job: &JobView,
    config: &BTreeMap<String, String>,
    expect: Expectation,
) -> Result<String, ExportError> {
    let uuid = job.event_uuid.as_str();
    let run = last_run(job)?;
    check_captured(uuid, &run)?;

    let mut notes = Notes::default();
    let mut org = OrgSeed::new();
    let unsupported = |what: String| ExportError::Unsupported {
        event_uuid: uuid.to_owned(),
        what,
    };
    let mut queries = 0usize;
    for call in &run.calls {
        match call.op.as_str() {
            "salesforce.update" => org.note_write(call),
            "salesforce.query" if call.outcome == "ok" => {
                if let Some(answer) = call.answer {
                    queries += 1;
                    org.add_answer(call.target, answer, &mut notes)
                        .map_err(unsupported)?;
                }
            }
            _ => {}
        }
    }
    // A record the run wrote must exist for the replayed write to succeed as it did.
    for call in &run.calls {
        if call.op == "salesforce.update" && !call.failed() {
            org.add_written(call, &mut notes).map_err(unsupported)?;
        }
    }
    let mut whmcs = WhmcsSeedOut::default();
    let billing_answers = whmcs.add_calls(&run.calls, &org, &mut notes);
    if whmcs.version.is_none() {
        whmcs.version = config
            .get("WHMCS_VERSION")
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty());
    }

    let injections = injections(&run, &mut notes);
    let expect = expectation(&run, expect);
    let order_id = job
        .order_id
        .clone()
        .or_else(|| job.record.as_ref().and_then(|r| r.order_id.clone()));
    let mut event = Map::new();
    match &order_id {
        Some(id) => {
            event.insert("OrderId__c".into(), Value::String(id.clone()));
        }
        None => notes.add("the job names no Order: the event is replayed without OrderId__c"),
    }
    notes.add(
        "what the journal does not hold: the event's other payload fields, the messages of failed \
         calls (stand-ins are injected), what other jobs did meanwhile (holds, concurrent writes)",
    );

    let counts = Counts {
        records: org.record_count(),
        queries,
        billing_answers,
    };
    let out = ScenarioOut {
        name: scenario_name(job, order_id.as_deref(), &run),
        description: description(
            job,
            order_id.as_deref(),
            &run,
            &counts,
            &whmcs,
            &injections,
            &expect,
            &notes,
        ),
        now_ms: Some(run.claimed_at_ms),
        config: config.clone(),
        schema: org.declared.clone(),
        org: org.into_records(),
        whmcs,
        run: vec![RunOut {
            name: format!("delivery {} as recorded", run.delivery),
            event,
            event_uuid: uuid.to_owned(),
            delivery: run.delivery,
            inject: injections,
            expect,
        }],
    };
    let body = toml::to_string(&out).map_err(|source| ExportError::Render {
        event_uuid: uuid.to_owned(),
        source,
    })?;
    let text = format!(
        "# Exported by `fulfilld orders export` from job {uuid}{}.\n\
         # Replay it against any component version: fulfilld test <component.wasm> <this file>\n\n{body}",
        order_id
            .as_deref()
            .map(|id| format!(" of Order {id}"))
            .unwrap_or_default()
    );
    validate(uuid, &text)?;
    Ok(text)
}

/// The scenario must load and seed the fakes as `fulfilld test` will.
fn validate(uuid: &str, text: &str) -> Result<(), ExportError> {
    let invalid = |message: String| ExportError::Invalid {
        event_uuid: uuid.to_owned(),
        message,
    };
    let scenario = Scenario::parse(text).map_err(&invalid)?;
    scenario.seed().map(drop).map_err(invalid)
}

// ---------------------------------------------------------------------------------------------
// The last run, from the journal.

/// One call of the run, as journaled.
struct RecordedCall<'a> {
    /// `salesforce.query`, `salesforce.update`, `billing.call`.
    op: String,
    target: &'a str,
    /// `ok` or the error kind.
    outcome: &'a str,
    code: Option<&'a str>,
    request: Option<&'a Value>,
    answer: Option<&'a Value>,
}

impl RecordedCall<'_> {
    /// The call's label as scenario files spell it (`billing.call AddOrder`).
    fn label(&self) -> String {
        let op: &'static str = match self.op.as_str() {
            "salesforce.query" => "salesforce.query",
            "salesforce.update" => "salesforce.update",
            "billing.call" => "billing.call",
            other => return format!("{other} {}", self.target),
        };
        call_label(&CallRecord {
            op,
            target: self.target.to_owned(),
            request: None,
            result: Ok(Value::Null),
            duration_ms: 0,
            at_ms: 0,
        })
    }

    /// Refused by the host before it was sent (policy, malformed input): the replay's own gate
    /// refuses it again, and the fakes never see it.
    fn refused(&self) -> bool {
        matches!(self.outcome, "forbidden" | "invalid-input")
    }

    fn failed(&self) -> bool {
        self.outcome != "ok"
    }

    /// The WHMCS action of a billing call, lower case.
    fn action(&self) -> Option<String> {
        (self.op == "billing.call").then(|| self.target.to_ascii_lowercase())
    }
}

struct LastRun<'a> {
    claimed_at_ms: i64,
    worker: &'a str,
    delivery: u32,
    calls: Vec<RecordedCall<'a>>,
    outcome: &'a str,
    code: Option<&'a str>,
    message: &'a str,
    component: &'a str,
}

/// The entries after the job's last `Claimed`, with the outcome they ended in.
fn last_run(job: &JobView) -> Result<LastRun<'_>, ExportError> {
    let uuid = &job.event_uuid;
    let start = job
        .journal
        .iter()
        .rposition(|entry| matches!(entry.event, JournalEvent::Claimed { .. }))
        .ok_or_else(|| ExportError::NothingToExport(uuid.clone()))?;
    let (claimed, rest) = match job.journal.get(start..) {
        Some([claimed, rest @ ..]) => (claimed, rest),
        _ => return Err(ExportError::NothingToExport(uuid.clone())),
    };
    let JournalEvent::Claimed { worker, delivery } = &claimed.event else {
        return Err(ExportError::NothingToExport(uuid.clone()));
    };
    let no_outcome = |why: String| ExportError::NoOutcome {
        event_uuid: uuid.clone(),
        delivery: *delivery,
        why,
    };
    if let Some(reason) = rest.iter().find_map(|entry| match &entry.event {
        JournalEvent::DeadLettered { reason } => Some(reason),
        _ => None,
    }) {
        return Err(no_outcome(format!("ended in the dead letters ({reason})")));
    }
    // Only this delivery's calls: a run that was reclaimed may still have journaled its own
    // calls after the next run's claim (0: a call journaled before deliveries were kept).
    let calls: Vec<RecordedCall> = rest
        .iter()
        .filter(|entry| match &entry.event {
            JournalEvent::Call { delivery: d, .. } => *d == 0 || d == delivery,
            _ => true,
        })
        .filter_map(recorded_call)
        .collect();
    let finished = rest.iter().rev().find_map(|entry| match &entry.event {
        JournalEvent::Finished {
            outcome,
            code,
            message,
            component,
            delivery: d,
            ..
        } if d == delivery => Some((outcome, code, message, component)),
        _ => None,
    });
    let Some((outcome, code, message, component)) = finished else {
        return Err(no_outcome(
            "has not finished (it is running, or its worker stopped and it will be handed out \
             again)"
                .into(),
        ));
    };
    match outcome.as_str() {
        "completed" | "skipped" | "failed" => {}
        "abandoned" => {
            return Err(no_outcome(format!(
                "was abandoned by the host ({}{message})",
                code.as_deref()
                    .map(|c| format!("{c}: "))
                    .unwrap_or_default()
            )));
        }
        other => return Err(no_outcome(format!("ended as {other:?}"))),
    }
    Ok(LastRun {
        claimed_at_ms: claimed.at_ms,
        worker,
        delivery: *delivery,
        calls,
        outcome,
        code: code.as_deref(),
        message,
        component,
    })
}

fn recorded_call(entry: &JournalEntry) -> Option<RecordedCall<'_>> {
    let JournalEvent::Call {
        interface,
        action,
        target,
        outcome,
        code,
        request,
        answer,
        ..
    } = &entry.event
    else {
        return None;
    };
    let op = match interface.as_str() {
        "billing" => "billing.call".to_owned(),
        other => format!("{other}.{action}"),
    };
    Some(RecordedCall {
        op,
        target,
        outcome,
        code: code.as_deref(),
        request: request.as_ref(),
        answer: answer.as_ref(),
    })
}

/// A successful query or WHMCS call always has an answer when capture is on; a body over the
/// journal's bound is a note of its size.
fn check_captured(uuid: &str, run: &LastRun) -> Result<(), ExportError> {
    let uncaptured = run
        .calls
        .iter()
        .any(|call| !call.failed() && call.op != "salesforce.update" && call.answer.is_none());
    if uncaptured {
        return Err(ExportError::NotCaptured(uuid.to_owned()));
    }
    let not_kept = |value: Option<&Value>| {
        value
            .and_then(Value::as_str)
            .is_some_and(|text| text.starts_with("[not kept: "))
    };
    for (index, call) in run.calls.iter().enumerate() {
        let what = if not_kept(call.answer) {
            "answer"
        } else if not_kept(call.request) && call.op == "billing.call" {
            "request"
        } else {
            continue;
        };
        return Err(ExportError::NotKept {
            event_uuid: uuid.to_owned(),
            index: index + 1,
            label: call.label(),
            what,
        });
    }
    Ok(())
}

/// What the description lists as not reproduced, each once, in order.
#[derive(Default)]
struct Notes(Vec<String>);

impl Notes {
    fn add(&mut self, note: impl Into<String>) {
        let note = note.into();
        if !self.0.contains(&note) {
            self.0.push(note);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fake org, from the Salesforce query answers.

/// The value Salesforce's answers and the redaction put in place of a field.
const REDACTED: &str = "[redacted]";

struct OrgSeed {
    /// The shipped schema plus what [`OrgSeed::declared`] adds.
    schema: Schema,
    /// `"Object.Field" = "Type"`, the scenario's `[schema]`.
    declared: BTreeMap<String, String>,
    /// Records by sObject, in the order first seen; a `null` marks a field read as empty.
    records: BTreeMap<String, Vec<Map<String, Value>>>,
    /// (sObject, 18-character id) -> position in `records`.
    index: HashMap<(String, String), usize>,
    /// (sObject, 18-character id, field), lower case: fields this run wrote before reading them,
    /// whose value at the start of the run is unknown.
    written: HashSet<(String, String, String)>,
    synthesized: u32,
}

impl OrgSeed {
    fn new() -> OrgSeed {
        OrgSeed {
            schema: Schema::shipped(),
            declared: BTreeMap::new(),
            records: BTreeMap::new(),
            index: HashMap::new(),
            written: HashSet::new(),
            synthesized: 0,
        }
    }

    fn record_count(&self) -> usize {
        self.records.values().map(Vec::len).sum()
    }

    /// The records as the scenario seeds them (fields read as empty left out: TOML has no null).
    fn into_records(self) -> BTreeMap<String, Vec<Map<String, Value>>> {
        self.records
            .into_iter()
            .map(|(sobject, records)| {
                let records = records
                    .into_iter()
                    .map(|record| record.into_iter().filter(|(_, v)| !v.is_null()).collect())
                    .collect();
                (sobject, records)
            })
            .collect()
    }

    /// The fields of a `salesforce.update` (`Order/801...`), so later answers do not seed them.
    fn note_write(&mut self, call: &RecordedCall) {
        let (Some((sobject, id)), Some(Value::Object(fields))) =
            (call.target.split_once('/'), call.request)
        else {
            return;
        };
        let sobject = sobject.to_ascii_lowercase();
        let id = id_key(id);
        for field in fields.keys() {
            self.written
                .insert((sobject.clone(), id.clone(), field.to_ascii_lowercase()));
        }
    }

    /// The record a successful `salesforce.update` wrote (`Order/801...`): kept as the answers
    /// had it, or seeded with its Id alone when no answer held it; fields the schema lacks are
    /// declared so the fake org takes the write as production did.
    fn add_written(&mut self, call: &RecordedCall, notes: &mut Notes) -> Result<(), String> {
        let Some((sobject, id)) = call.target.split_once('/') else {
            return Ok(());
        };
        if !valid_id(id) {
            return Ok(());
        }
        let sobject = self.sobject_name(sobject)?;
        if let Some(Value::Object(fields)) = call.request {
            for (field, value) in fields {
                self.field_name(&sobject, field, value)?;
            }
        }
        if !self.index.contains_key(&(sobject.clone(), id_key(id))) {
            notes.add(format!(
                "{sobject} {id} was written but never read: it is seeded with its Id alone"
            ));
            self.put(&sobject, id, Vec::new(), notes)?;
        }
        Ok(())
    }

    /// Every record of one query answer (`{"totalSize","done","records":[..]}`).
    fn add_answer(&mut self, soql: &str, answer: &Value, notes: &mut Notes) -> Result<(), String> {
        let Some(records) = answer.get("records").and_then(Value::as_array) else {
            notes.add(format!(
                "a query answer without `records` was left out ({})",
                crate::domain::clip(soql, 80)
            ));
            return Ok(());
        };
        let from = soql_object(soql);
        let equalities = where_equalities(soql);
        for record in records {
            self.add_record(record, from.as_deref(), None, &equalities, notes)?;
        }
        Ok(())
    }

    /// Adds one record of an answer with its nested parents and child records; returns its Id.
    /// `id_hint` is the child's lookup value for a nested parent; `extra` fields are set when the
    /// record does not hold them (its parent lookup, the query's `WHERE` equalities).
    fn add_record(
        &mut self,
        value: &Value,
        type_hint: Option<&str>,
        id_hint: Option<&str>,
        extra: &[(String, Value)],
        notes: &mut Notes,
    ) -> Result<Option<String>, String> {
        let Value::Object(record) = value else {
            return Ok(None);
        };
        let attributes = record.get("attributes");
        let declared_type = attributes
            .and_then(|a| a.get("type"))
            .and_then(Value::as_str);
        let Some(raw_type) = declared_type.or(type_hint) else {
            return Err(
                "a record in the query answers has no attributes.type and its sObject cannot be \
                 told from the query"
                    .into(),
            );
        };
        let sobject = self.sobject_name(raw_type)?;
        let explicit = record
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Id"))
            .and_then(|(_, v)| v.as_str())
            .filter(|id| valid_id(id))
            .map(str::to_owned)
            .or_else(|| {
                attributes
                    .and_then(|a| a.get("url"))
                    .and_then(Value::as_str)
                    .and_then(id_from_url)
            });
        let id = match explicit.or_else(|| id_hint.filter(|id| valid_id(id)).map(str::to_owned)) {
            Some(id) => id,
            None => self.synthesize_id(&sobject),
        };

        let mut fields: Vec<(String, Value)> = Vec::new();
        let mut parents: Vec<(&String, &Value)> = Vec::new();
        let mut children: Vec<(&String, &Value)> = Vec::new();
        for (key, value) in record {
            if key == "attributes" || key.eq_ignore_ascii_case("Id") {
                continue;
            }
            match value {
                Value::Object(inner) if inner.contains_key("records") => {
                    children.push((key, value))
                }
                Value::Object(_) => parents.push((key, value)),
                // Salesforce answers no list values; nothing the fake org could hold.
                Value::Array(_) => {}
                scalar => fields.push((key.clone(), scalar.clone())),
            }
        }
        for (relationship, parent) in parents {
            let parent_type = parent
                .get("attributes")
                .and_then(|a| a.get("type"))
                .and_then(Value::as_str);
            let (lookup, parent_type) = self.parent_lookup(&sobject, relationship, parent_type)?;
            let current = fields
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(&lookup))
                .and_then(|(_, v)| v.as_str())
                .map(str::to_owned);
            let parent_id =
                self.add_record(parent, Some(&parent_type), current.as_deref(), &[], notes)?;
            if let (Some(parent_id), None) = (parent_id, current) {
                fields.retain(|(k, _)| !k.eq_ignore_ascii_case(&lookup));
                fields.push((lookup, Value::String(parent_id)));
            }
        }
        for (field, value) in extra {
            if !fields.iter().any(|(k, _)| k.eq_ignore_ascii_case(field)) {
                fields.push((field.clone(), value.clone()));
            }
        }
        self.put(&sobject, &id, fields, notes)?;

        for (relationship, child) in children {
            let (child_type, link) = match self
                .schema
                .children(&sobject)
                .into_iter()
                .find(|c| c.name.eq_ignore_ascii_case(relationship))
            {
                Some(known) => (Some(known.child), known.field),
                None => {
                    notes.add(format!(
                        "the child relationship {sobject}.{relationship} is not in the fake org's \
                         schema: a replayed query naming it fails with INVALID_TYPE"
                    ));
                    (None, format!("{sobject}Id"))
                }
            };
            let link = vec![(link, Value::String(id.clone()))];
            if let Some(records) = child.get("records").and_then(Value::as_array) {
                for child_record in records {
                    self.add_record(child_record, child_type.as_deref(), None, &link, notes)?;
                }
            }
        }
        Ok(Some(id))
    }

    /// The org's spelling of `name`; a custom object it does not know is created.
    fn sobject_name(&mut self, name: &str) -> Result<String, String> {
        if let Some(object) = self.schema.object(name) {
            return Ok(object.name.clone());
        }
        let custom = strip_suffix_ignore_case(name, "__c").is_some()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !custom {
            return Err(format!(
                "the query answers hold {name} records, an sObject the fake org does not model \
                 (it has Order, OrderItem, Account, Product2, Pricebook2, PricebookEntry, User \
                 and custom objects)"
            ));
        }
        // A custom object is created by its first declared field.
        self.declare(name, "Name", "Text(80)")?;
        Ok(name.to_owned())
    }

    /// The lookup field behind relationship `relationship` of `sobject` and the parent's
    /// sObject; a lookup the schema lacks is declared (`Foo__r` -> `Foo__c`, `Bar` -> `BarId`).
    fn parent_lookup(
        &mut self,
        sobject: &str,
        relationship: &str,
        parent_type: Option<&str>,
    ) -> Result<(String, String), String> {
        if let Some(field) = self
            .schema
            .object(sobject)
            .and_then(|o| o.relationship(relationship))
        {
            let to = parent_type
                .map(str::to_owned)
                .or_else(|| field.reference_to.first().cloned())
                .unwrap_or_else(|| relationship.to_owned());
            return Ok((field.name.clone(), to));
        }
        let (lookup, guessed) = match strip_suffix_ignore_case(relationship, "__r") {
            Some(base) => (format!("{base}__c"), format!("{base}__c")),
            None => (format!("{relationship}Id"), relationship.to_owned()),
        };
        let to = parent_type.map_or(guessed, str::to_owned);
        let to = self.sobject_name(&to)?;
        let exists = self
            .schema
            .object(sobject)
            .is_some_and(|o| o.field(&lookup).is_some());
        if !exists {
            self.declare(sobject, &lookup, &format!("Lookup({to})"))?;
        }
        Ok((lookup, to))
    }

    fn declare(&mut self, sobject: &str, field: &str, spec: &str) -> Result<(), String> {
        let name = format!("{sobject}.{field}");
        self.schema
            .declare(&name, spec)
            .map_err(|e| format!("cannot declare {name} as {spec}: {e}"))?;
        self.declared.insert(name, spec.to_owned());
        Ok(())
    }

    /// The schema's spelling of field `field` of `sobject`, declared from `value` when the
    /// schema lacks it; `None` for a relationship name (a parent or child relationship that was
    /// `null` or redacted).
    fn field_name(
        &mut self,
        sobject: &str,
        field: &str,
        value: &Value,
    ) -> Result<Option<String>, String> {
        let Some(object) = self.schema.object(sobject) else {
            return Err(format!("{sobject} is not in the fake org's schema"));
        };
        if let Some(def) = object.field(field) {
            return Ok(Some(def.name.clone()));
        }
        let relationship = object.relationship(field).is_some()
            || strip_suffix_ignore_case(field, "__r").is_some()
            || self
                .schema
                .children(sobject)
                .iter()
                .any(|c| c.name.eq_ignore_ascii_case(field));
        if relationship {
            return Ok(None);
        }
        if field.is_empty()
            || !field
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Ok(None);
        }
        let spec = match value {
            Value::Bool(_) => "Checkbox",
            Value::Number(n) if n.is_i64() || n.is_u64() => "Number(18,0)",
            Value::Number(_) => "Number(16,2)",
            Value::String(text) if text.chars().count() > 255 => "LongTextArea(131072)",
            _ => "Text(255)",
        };
        self.declare(sobject, field, spec)?;
        Ok(Some(field.to_owned()))
    }

    /// Merges `fields` into record `id` of `sobject`: a field already held (from an earlier
    /// answer) keeps its value, and a field this run wrote before reading is left out.
    fn put(
        &mut self,
        sobject: &str,
        id: &str,
        fields: Vec<(String, Value)>,
        notes: &mut Notes,
    ) -> Result<(), String> {
        let key = (sobject.to_owned(), id_key(id));
        let table = self.records.entry(sobject.to_owned()).or_default();
        let position = match self.index.get(&key) {
            Some(position) => *position,
            None => {
                let mut record = Map::new();
                record.insert("Id".into(), Value::String(id.to_owned()));
                table.push(record);
                self.index.insert(key.clone(), table.len() - 1);
                table.len() - 1
            }
        };
        for (field, value) in fields {
            let Some(field) = self.field_name(sobject, &field, &value)? else {
                continue;
            };
            let written = (
                sobject.to_ascii_lowercase(),
                key.1.clone(),
                field.to_ascii_lowercase(),
            );
            let Some(record) = self
                .records
                .get_mut(sobject)
                .and_then(|table| table.get_mut(position))
            else {
                continue;
            };
            if record.keys().any(|k| k.eq_ignore_ascii_case(&field)) {
                continue;
            }
            if self.written.contains(&written) {
                notes.add(format!(
                    "{sobject}.{field} was first read after this run wrote it: its value before \
                     the run is not known and it is left out of the seed"
                ));
                continue;
            }
            record.insert(field, value);
        }
        Ok(())
    }

    /// An 18-character id with `sobject`'s key prefix that no real record has (`EXP` marks it).
    fn synthesize_id(&mut self, sobject: &str) -> String {
        self.synthesized += 1;
        let prefix = self
            .schema
            .object(sobject)
            .map_or("a00", |o| o.key_prefix.as_str());
        let id15 = format!("{prefix:0<3.3}EXP{:09}", self.synthesized);
        format!("{id15}{}", crate::domain::record_id_checksum(&id15))
    }

    /// The `Name` of the Product2 record whose `WH_Product_ID__c` is `pid`.
    fn product_name(&self, pid: u64) -> Option<String> {
        let wanted = pid.to_string();
        self.records
            .get("Product2")?
            .iter()
            .find(|record| {
                record
                    .get("WH_Product_ID__c")
                    .and_then(|v| text(Some(v)))
                    .is_some_and(|v| v == wanted)
            })
            .and_then(|record| record.get("Name"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The Id at the end of a record's `attributes.url` (`/services/data/v66.0/sobjects/Account/001…`).
fn id_from_url(url: &str) -> Option<String> {
    let last = url.trim_end_matches('/').rsplit('/').next()?;
    (matches!(last.len(), 15 | 18) && valid_id(last)).then(|| last.to_owned())
}

/// The form records are matched in: the 18-character id, else the id as given.
fn id_key(id: &str) -> String {
    crate::domain::record_id_18(id).unwrap_or_else(|| id.to_owned())
}

fn strip_suffix_ignore_case<'a>(text: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = text.len().checked_sub(suffix.len())?;
    let (head, tail) = (text.get(..cut)?, text.get(cut..)?);
    (tail.eq_ignore_ascii_case(suffix) && !head.is_empty()).then_some(head)
}

/// The `field = literal` conditions of a query's outer `WHERE` when it is a plain conjunction
/// (`WHERE OrderId = '801…' AND Status = 'Activated'`; `IN` with one value counts): the values
/// the records it answered must hold for the replayed query to find them. Empty when the filter
/// has `OR` or `NOT`, or nothing of that shape.
fn where_equalities(soql: &str) -> Vec<(String, Value)> {
    let Some(tokens) = soql_tokens(soql) else {
        return Vec::new();
    };
    let mut depth = 0usize;
    let mut clause: Option<Vec<Token>> = None;
    for token in tokens {
        if let Token::Word(word) = &token
            && depth == 0
        {
            let word = word.to_ascii_uppercase();
            if word == "WHERE" {
                clause = Some(Vec::new());
                continue;
            }
            if clause.is_some()
                && matches!(
                    word.as_str(),
                    "ORDER" | "LIMIT" | "GROUP" | "OFFSET" | "HAVING" | "FOR" | "WITH"
                )
            {
                break;
            }
        }
        match &token {
            Token::Punct(p) if p == "(" => depth += 1,
            Token::Punct(p) if p == ")" => depth = depth.saturating_sub(1),
            _ => {}
        }
        if let Some(clause) = &mut clause {
            clause.push(token);
        }
    }
    let Some(clause) = clause else {
        return Vec::new();
    };
    let mut conjuncts: Vec<Vec<Token>> = vec![Vec::new()];
    let mut depth = 0usize;
    for token in clause {
        match &token {
            Token::Punct(p) if p == "(" => depth += 1,
            Token::Punct(p) if p == ")" => depth = depth.saturating_sub(1),
            Token::Word(w)
                if depth == 0
                    && (w.eq_ignore_ascii_case("OR") || w.eq_ignore_ascii_case("NOT")) =>
            {
                return Vec::new();
            }
            Token::Word(w) if depth == 0 && w.eq_ignore_ascii_case("AND") => {
                conjuncts.push(Vec::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = conjuncts.last_mut() {
            last.push(token);
        }
    }
    conjuncts
        .iter()
        .filter_map(|conjunct| {
            let (field, literal) = match conjunct.as_slice() {
                [Token::Word(field), Token::Punct(eq), literal] if eq == "=" => (field, literal),
                [
                    Token::Word(field),
                    Token::Word(in_),
                    Token::Punct(open),
                    literal,
                    Token::Punct(close),
                ] if in_.eq_ignore_ascii_case("IN") && open == "(" && close == ")" => {
                    (field, literal)
                }
                _ => return None,
            };
            if field.contains('.') || field.eq_ignore_ascii_case("Id") {
                return None;
            }
            let value = match literal {
                Token::Str(text) => Value::String(text.clone()),
                Token::Word(word) if word.eq_ignore_ascii_case("true") => Value::Bool(true),
                Token::Word(word) if word.eq_ignore_ascii_case("false") => Value::Bool(false),
                Token::Word(word) => {
                    if let Ok(n) = word.parse::<i64>() {
                        Value::from(n)
                    } else {
                        Value::from(word.parse::<f64>().ok()?)
                    }
                }
                Token::Punct(_) => return None,
            };
            Some((field.clone(), value))
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Punct(String),
}

/// SOQL as words, quoted strings (unescaped) and punctuation; `None` for an unclosed string.
fn soql_tokens(soql: &str) -> Option<Vec<Token>> {
    let mut out = Vec::new();
    let mut chars = soql.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' {
            chars.next();
            let mut text = String::new();
            loop {
                match chars.next()? {
                    '\\' => text.push(match chars.next()? {
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        other => other,
                    }),
                    '\'' => break,
                    other => text.push(other),
                }
            }
            out.push(Token::Str(text));
        } else if c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '+' | ':') {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '+' | ':') {
                    word.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Token::Word(word));
        } else if matches!(c, '=' | '<' | '>' | '!') {
            let mut op = String::new();
            while let Some(&c) = chars.peek() {
                if matches!(c, '=' | '<' | '>' | '!') {
                    op.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Token::Punct(op));
        } else {
            chars.next();
            out.push(Token::Punct(c.to_string()));
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// The fake WHMCS, from the WHMCS answers.

/// Gateways the fake WHMCS's AddOrder accepts (`FakeWhmcs::default`).
const FAKE_GATEWAYS: [&str; 5] = [
    "stripe",
    "paypal",
    "banktransfer",
    "offlinecc",
    "gocardless",
];

/// First pid of the stand-in products for order lines GetOrders named only by product name.
const STAND_IN_PID: u64 = 900_000_001;

/// `[whmcs]` of the scenario (`WhmcsSeed`'s keys).
#[derive(Debug, Default, Serialize)]
struct WhmcsSeedOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    next_order_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    clients: Vec<FakeClient>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    products: Vec<FakeProduct>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    orders: Vec<FakeOrder>,
}

/// What the WHMCS answers of one run say about the installation, merged first answer first.
#[derive(Default)]
struct WhmcsState {
    clients: BTreeMap<u64, FakeClient>,
    details_known: BTreeSet<u64>,
    pay_methods_known: BTreeSet<u64>,
    products: BTreeMap<u64, FakeProduct>,
    /// Products only known by the pid AddOrder sent (a GetProducts answer may name them).
    placeholder_products: BTreeSet<u64>,
    orders: BTreeMap<u64, FakeOrder>,
    /// Orders this run's AddOrder created: not there at the start of the run.
    created: BTreeSet<u64>,
    next_order_id: Option<u64>,
    version: Option<String>,
    /// The client this run worked for (AddOrder's or GetPayMethods' `clientid`).
    client: Option<u64>,
}

impl WhmcsSeedOut {
    /// Seeds from the billing calls of the run; returns how many answers were read.
    fn add_calls(&mut self, calls: &[RecordedCall], org: &OrgSeed, notes: &mut Notes) -> usize {
        let mut state = WhmcsState::default();
        // AddOrder's products first, so GetOrders lines can be named by them.
        for call in calls {
            if call.action().as_deref() == Some("addorder")
                && let Some(Value::Object(params)) = call.request
            {
                for pid in pids(params.get("pid")) {
                    state.products.entry(pid).or_insert_with(|| {
                        state.placeholder_products.insert(pid);
                        FakeProduct {
                            pid,
                            name: org
                                .product_name(pid)
                                .unwrap_or_else(|| format!("Product {pid}")),
                            cycles: Vec::new(),
                        }
                    });
                }
            }
        }
        let mut answers = 0;
        for call in calls {
            let Some(action) = call.action() else {
                continue;
            };
            let params = match call.request {
                Some(Value::Object(params)) => Some(params),
                _ => None,
            };
            let param = |name: &str| params.and_then(|p| p.get(name));
            let answer = call.answer.filter(|_| !call.failed());
            if answer.is_some() {
                answers += 1;
            }
            match (action.as_str(), answer) {
                ("getclientsdetails", Some(answer)) => {
                    state.client_details(param("clientid"), answer)
                }
                ("getpaymethods", Some(answer)) => state.pay_methods(param("clientid"), answer),
                ("getorders", Some(answer)) => state.listed_orders(answer, notes),
                ("getproducts", Some(answer)) => state.listed_products(answer),
                ("whmcsdetails", Some(answer)) => {
                    if state.version.is_none() {
                        state.version = answer
                            .get("whmcs")
                            .and_then(|w| w.get("version"))
                            .and_then(|v| text(Some(v)));
                    }
                }
                ("addorder", answer) => {
                    if let Some(id) = param("clientid").and_then(number) {
                        state.client.get_or_insert(id);
                        state.clients.entry(id).or_insert_with(|| FakeClient {
                            id,
                            ..FakeClient::default()
                        });
                    }
                    if let Some(gateway) = param("paymentmethod").and_then(|v| text(Some(v)))
                        && !FAKE_GATEWAYS.contains(&gateway.as_str())
                        && gateway != REDACTED
                    {
                        notes.add(format!(
                            "AddOrder paid with gateway {gateway:?}, which the fake WHMCS does not \
                             accept (it knows {}): the replayed AddOrder answers Invalid Payment \
                             Method",
                            FAKE_GATEWAYS.join(", ")
                        ));
                    }
                    if let Some(id) = answer.and_then(|a| a.get("orderid")).and_then(number) {
                        state.created.insert(id);
                        state.next_order_id.get_or_insert(id);
                    }
                }
                ("acceptorder" | "cancelorder", Some(_)) => {
                    // It acted on a Pending order: one this run created, or one there before.
                    if let Some(id) = param("orderid").and_then(number)
                        && !state.created.contains(&id)
                    {
                        let client_id = state.client.unwrap_or(0);
                        state.orders.entry(id).or_insert_with(|| FakeOrder {
                            id,
                            client_id,
                            ..FakeOrder::default()
                        });
                    }
                }
                (_, Some(_)) => notes.add(format!(
                    "the fake WHMCS answers {} with Command Not Found, not as production did",
                    call.target
                )),
                (_, None) => {}
            }
        }
        self.next_order_id = state.next_order_id;
        self.version = state.version;
        self.clients = state.clients.into_values().collect();
        self.products = state.products.into_values().collect();
        self.orders = state.orders.into_values().collect();
        answers
    }
}

impl WhmcsState {
    fn client(&mut self, id: u64) -> &mut FakeClient {
        self.clients.entry(id).or_insert_with(|| FakeClient {
            id,
            ..FakeClient::default()
        })
    }

    /// GetClientsDetails: `client {id, email, status, currency_code, defaultgateway}` (also
    /// flattened).
    fn client_details(&mut self, clientid: Option<&Value>, answer: &Value) {
        let details = answer.get("client").unwrap_or(answer);
        let id = clientid.and_then(number).or_else(|| {
            ["id", "userid", "client_id"]
                .iter()
                .find_map(|key| details.get(*key).and_then(number))
        });
        let Some(id) = id else { return };
        if !self.details_known.insert(id) {
            return;
        }
        let field = |key: &str| text(details.get(key)).or_else(|| text(answer.get(key)));
        let (email, status, currency, gateway) = (
            field("email"),
            field("status"),
            field("currency_code"),
            field("defaultgateway"),
        );
        let client = self.client(id);
        if let Some(email) = email {
            client.email = email;
        }
        if let Some(status) = status {
            client.status = status;
        }
        if let Some(currency) = currency {
            client.currency_code = currency;
        }
        if let Some(gateway) = gateway {
            client.default_gateway = gateway;
        }
    }

    /// GetPayMethods: `paymethods[] {id, type, description, gateway_name}`; WHMCS leaves the list
    /// out or sends `""` when there is none.
    fn pay_methods(&mut self, clientid: Option<&Value>, answer: &Value) {
        let Some(id) = clientid
            .and_then(number)
            .or_else(|| answer.get("clientid").and_then(number))
        else {
            return;
        };
        self.client.get_or_insert(id);
        if !self.pay_methods_known.insert(id) {
            return;
        }
        let methods = match answer.get("paymethods") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|m| FakePayMethod {
                    id: m.get("id").and_then(number).unwrap_or(0),
                    kind: text(m.get("type")).unwrap_or_default(),
                    gateway_name: text(m.get("gateway_name")).unwrap_or_default(),
                    description: text(m.get("description")).unwrap_or_default(),
                })
                .collect(),
            _ => Vec::new(),
        };
        self.client(id).paymethods = methods;
    }

    /// GetOrders: `orders.order[]` (or one object) with `id`, `userid`, `status`,
    /// `paymentmethod`, `invoiceid`, `lineitems.lineitem[] {relid, product, billingcycle}`.
    fn listed_orders(&mut self, answer: &Value, notes: &mut Notes) {
        for order in one_or_many(answer.get("orders").and_then(|o| o.get("order"))) {
            let Some(id) = order.get("id").and_then(number) else {
                continue;
            };
            if self.created.contains(&id) || self.orders.contains_key(&id) {
                continue;
            }
            let mut items = Vec::new();
            let mut service_ids = Vec::new();
            for line in one_or_many(order.get("lineitems").and_then(|l| l.get("lineitem"))) {
                let product = text(line.get("product")).unwrap_or_default();
                let pid = self.pid_named(&product, notes);
                items.push(FakeOrderItem {
                    pid,
                    billing_cycle: cycle_name(&text(line.get("billingcycle")).unwrap_or_default()),
                    qty: 1,
                });
                service_ids.push(line.get("relid").and_then(number).unwrap_or(0));
            }
            self.orders.insert(
                id,
                FakeOrder {
                    id,
                    client_id: order.get("userid").and_then(number).unwrap_or(0),
                    status: text(order.get("status")).unwrap_or_else(|| "Pending".into()),
                    payment_method: text(order.get("paymentmethod")).unwrap_or_default(),
                    items,
                    service_ids,
                    invoice_id: order.get("invoiceid").and_then(number).unwrap_or(0),
                },
            );
        }
    }

    /// The pid of the product named `name`, or a stand-in product with that name.
    fn pid_named(&mut self, name: &str, notes: &mut Notes) -> u64 {
        if let Some(product) = self.products.values().find(|p| p.name == name) {
            return product.pid;
        }
        let pid = self
            .products
            .keys()
            .copied()
            .filter(|pid| *pid >= STAND_IN_PID)
            .max()
            .map_or(STAND_IN_PID, |max| max + 1);
        notes.add(format!(
            "GetOrders names products but not their pids: lines of existing orders use stand-in \
             products from pid {STAND_IN_PID}"
        ));
        self.products.insert(
            pid,
            FakeProduct {
                pid,
                name: name.to_owned(),
                cycles: Vec::new(),
            },
        );
        pid
    }

    /// GetProducts: `products.product[] {pid, name, pricing.<currency>.<cycle>}` (`-1.00`: the
    /// cycle is off).
    fn listed_products(&mut self, answer: &Value) {
        for product in one_or_many(answer.get("products").and_then(|p| p.get("product"))) {
            let Some(pid) = product.get("pid").and_then(number) else {
                continue;
            };
            if self.products.contains_key(&pid) && !self.placeholder_products.remove(&pid) {
                continue;
            }
            let mut cycles = BTreeSet::new();
            let mut all = true;
            if let Some(Value::Object(currencies)) = product.get("pricing") {
                for prices in currencies.values() {
                    if let Value::Object(prices) = prices {
                        for (cycle, price) in prices {
                            if text(Some(price)).is_some_and(|p| p.trim() == "-1.00") {
                                all = false;
                            } else {
                                cycles.insert(cycle.to_ascii_lowercase());
                            }
                        }
                    }
                }
            }
            let name = text(product.get("name"))
                .or_else(|| self.products.get(&pid).map(|p| p.name.clone()))
                .unwrap_or_else(|| format!("Product {pid}"));
            self.products.insert(
                pid,
                FakeProduct {
                    pid,
                    name,
                    cycles: if all {
                        Vec::new()
                    } else {
                        cycles.into_iter().collect()
                    },
                },
            );
        }
    }
}

/// A PHP-style list as WHMCS answers it: an array, one object, or nothing (`""`).
fn one_or_many(value: Option<&Value>) -> Vec<&Value> {
    match value {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(object @ Value::Object(_)) => vec![object],
        _ => Vec::new(),
    }
}

/// AddOrder's `pid` parameter: a list, one value, or PHP-style `{"0": .., "1": ..}`.
fn pids(value: Option<&Value>) -> Vec<u64> {
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(number).collect(),
        Some(Value::Object(items)) => items.values().filter_map(number).collect(),
        Some(scalar) => number(scalar).into_iter().collect(),
        None => Vec::new(),
    }
}

/// A WHMCS id as a number (`42`, `"42"`, `42.0`).
fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1e15)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A text field (numbers as their text); `None` when absent or not a scalar.
fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A billing cycle's system name from GetOrders' label (`Semi-Annually` -> `semiannually`).
fn cycle_name(label: &str) -> String {
    let squashed: String = label
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase();
    match squashed.as_str() {
        "freeaccount" => "free".to_owned(),
        "" => "monthly".to_owned(),
        _ => squashed,
    }
}

// ---------------------------------------------------------------------------------------------
// Injections and expectations.

/// `[[run.inject]]`: one failure, as `Injection` reads it.
#[derive(Debug, Serialize)]
struct InjectOut {
    op: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    nth: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_status: Option<u16>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    timeout: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    whmcs_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<CallError>,
}

/// WHMCS's answer to AcceptOrder or CancelOrder on an order that is not Pending.
const WHMCS_NOT_PENDING: &str = "Order ID not found or Status not Pending";

/// One injection per call that failed in the recording, at the same call. The test kit arms
/// them in this order and the first that fires decides a call, unseen by the later ones: so
/// the k-th failure of one (op, target) is the (position - (k - 1))-th call its injection sees.
/// Calls the host refused before sending (policy, malformed input) are neither injected nor
/// counted: the replay's gate refuses them again and the fakes never see them.
fn injections(run: &LastRun, notes: &mut Notes) -> Vec<InjectOut> {
    // The failure the run ended with: the last one with the run's code.
    let last_failure = run
        .calls
        .iter()
        .rposition(|c| c.failed() && !c.refused() && c.code == run.code);
    let mut seen: HashMap<(String, String), u32> = HashMap::new();
    let mut injected: HashMap<(String, String), u32> = HashMap::new();
    let mut out = Vec::new();
    for (index, call) in run.calls.iter().enumerate() {
        if call.refused() {
            continue;
        }
        if !INJECTABLE_OPS.contains(&call.op.as_str()) {
            if call.failed() {
                notes.add(format!("the failed {} call is not injected", call.op));
            }
            continue;
        }
        let target = match call.op.as_str() {
            "salesforce.query" => soql_object(call.target),
            "salesforce.update" => call.target.split_once('/').map(|(s, _)| s.to_owned()),
            _ => Some(call.target.to_owned()),
        };
        if target.is_none() && call.failed() {
            notes.add(format!(
                "a failed {} names no target: its injection matches every {} call",
                call.op, call.op
            ));
        }
        let key = (
            call.op.clone(),
            target.as_deref().unwrap_or_default().to_ascii_lowercase(),
        );
        let position = {
            let seen = seen.entry(key.clone()).or_insert(0);
            *seen += 1;
            *seen
        };
        if !call.failed() {
            continue;
        }
        let code = call.code.unwrap_or_default();
        if call.outcome == "rejected"
            && code == "WHMCS_ERROR"
            && call.action().as_deref() == Some("addorder")
        {
            // WHMCS refused the AddOrder request itself (result=error): what it refuses depends
            // on the lines, client and gateway the component sent, which is what a new version
            // changes. The replay's WHMCS answers the request from the seed as WHMCS did, so a
            // version that sends a different request gets a different answer; injecting it
            // would fail every version alike. (Other actions' refusals are about WHMCS's state,
            // e.g. an order no longer Pending, and are injected as recorded.)
            notes.add(format!(
                "call {} (AddOrder) was refused by WHMCS (result=error): not injected; the \
                 replay's WHMCS answers the request from the seeded state",
                index + 1
            ));
            continue;
        }
        let earlier = injected.entry(key).or_insert(0);
        let nth = position - *earlier;
        *earlier += 1;
        let mut injection = InjectOut {
            op: call.op.clone(),
            target,
            nth,
            http_status: None,
            timeout: false,
            whmcs_error: None,
            error: None,
        };
        let message = || failure_message(run, call, Some(index) == last_failure);
        match call.outcome {
            "http-status" if http_status_reproduces(call, code).is_some() => {
                injection.http_status = http_status_reproduces(call, code);
            }
            "timeout" if code == "ETIMEOUT" => injection.timeout = true,
            "rejected" if code == "WHMCS_ERROR" && call.op == "billing.call" => {
                injection.whmcs_error = Some(message());
            }
            kind => match serde_json::from_value::<ErrorKind>(Value::String(kind.to_owned())) {
                Ok(kind) => injection.error = Some(CallError::new(kind, code, message())),
                Err(_) => {
                    notes.add(format!(
                        "call {} failed as {kind:?}, not an error kind this host knows: not \
                             injected",
                        index + 1
                    ));
                    continue;
                }
            },
        }
        out.push(injection);
    }
    out
}

/// The status when `http_status = status` makes the component see what it saw: `http-status`
/// with that code (for WHMCS, through the real classifier with the test kit's default body).
fn http_status_reproduces(call: &RecordedCall, code: &str) -> Option<u16> {
    let status: u16 = code.parse().ok()?;
    if call.op != "billing.call" {
        return Some(status);
    }
    let body = format!(r#"{{"result":"error","message":"HTTP {status}"}}"#);
    match crate::whmcs::classify_response(status, body.as_bytes()) {
        Err(error) if error.kind == ErrorKind::HttpStatus && error.code == code => Some(status),
        _ => None,
    }
}

/// The message an injected failure carries. The journal keeps no message of a failed call: for
/// the failure the run ended with, the component's message usually quotes it after `<call>: `;
/// AcceptOrder and CancelOrder have one WHMCS error text; otherwise a stand-in says so.
fn failure_message(run: &LastRun, call: &RecordedCall, ended_the_run: bool) -> String {
    let code = call.code.unwrap_or_default();
    if code == "WHMCS_ERROR"
        && matches!(
            call.action().as_deref(),
            Some("acceptorder" | "cancelorder")
        )
    {
        return WHMCS_NOT_PENDING.to_owned();
    }
    if ended_the_run
        && run.code == call.code
        && let Some((_, quoted)) = run.message.split_once(": ")
        && !quoted.trim().is_empty()
    {
        return quoted.trim().to_owned();
    }
    if code == "WHMCS_ERROR" {
        "WHMCS answered result=error (its message is not kept in the job journal)".to_owned()
    } else {
        format!(
            "{} {code} (recorded; the job journal keeps no message)",
            call.outcome
        )
    }
}

/// `[run.expect]`.
#[derive(Debug, Serialize)]
struct ExpectOut {
    result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    calls: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    whmcs_calls: Vec<WhmcsCallOut>,
}

#[derive(Debug, Serialize)]
struct WhmcsCallOut {
    action: String,
    params: Map<String, Value>,
}

/// AddOrder parameters that follow from the seeded data and settings alone (the order's lines,
/// client and gateway), checked in the replay.
const ADD_ORDER_CHECKED: [&str; 5] = ["clientid", "paymentmethod", "pid", "billingcycle", "qty"];

/// What an exported scenario expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expectation {
    /// What the run did: its result and code, its exact calls and AddOrder lines (a regression
    /// test: a version that behaves differently fails it).
    Recorded,
    /// That the Order is provisioned: `result = "completed"`, nothing else pinned (the failed
    /// run as a bug report: it fails the same way until a version handles the Order).
    Completed,
}

impl Expectation {
    /// The default for a job that ended as `outcome`: a failed job is a bug report, any other
    /// a regression test.
    pub fn default_for(outcome: &str) -> Expectation {
        if outcome == "failed" {
            Expectation::Completed
        } else {
            Expectation::Recorded
        }
    }
}

fn expectation(run: &LastRun, mode: Expectation) -> ExpectOut {
    if mode == Expectation::Completed {
        return ExpectOut {
            result: "completed".to_owned(),
            code: None,
            calls: None,
            whmcs_calls: Vec::new(),
        };
    }
    let failed = run.outcome == "failed";
    let mut whmcs_calls: Vec<WhmcsCallOut> = run
        .calls
        .iter()
        .filter(|call| call.action().as_deref() == Some("addorder"))
        .map(|call| {
            let mut params = Map::new();
            if let Some(Value::Object(sent)) = call.request {
                for key in ADD_ORDER_CHECKED {
                    if let Some((name, value)) =
                        sent.iter().find(|(k, _)| k.eq_ignore_ascii_case(key))
                        && checkable(value)
                    {
                        params.insert(name.clone(), value.clone());
                    }
                }
            }
            WhmcsCallOut {
                action: call.target.to_owned(),
                params,
            }
        })
        .collect();
    if whmcs_calls.iter().all(|call| call.params.is_empty()) {
        whmcs_calls.clear();
    }
    ExpectOut {
        result: run.outcome.to_owned(),
        code: run.code.filter(|_| failed).map(str::to_owned),
        calls: Some(run.calls.iter().map(RecordedCall::label).collect()),
        whmcs_calls,
    }
}

/// A value TOML can hold and the replay can compare: no null, nothing redacted.
fn checkable(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(s) => s != REDACTED,
        Value::Array(items) => items.iter().all(checkable),
        Value::Object(items) => items.values().all(checkable),
        _ => true,
    }
}

// ---------------------------------------------------------------------------------------------
// The file.

/// The scenario file, in the order a reader wants it (`Scenario`'s keys).
#[derive(Debug, Serialize)]
struct ScenarioOut {
    name: String,
    description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    now_ms: Option<i64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    config: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    schema: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    org: BTreeMap<String, Vec<Map<String, Value>>>,
    whmcs: WhmcsSeedOut,
    run: Vec<RunOut>,
}

#[derive(Debug, Serialize)]
struct RunOut {
    name: String,
    event: Map<String, Value>,
    event_uuid: String,
    delivery: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    inject: Vec<InjectOut>,
    expect: ExpectOut,
}

struct Counts {
    records: usize,
    queries: usize,
    billing_answers: usize,
}

/// The outcome as one phrase: `failed 503`, `completed`.
fn outcome_text(run: &LastRun) -> String {
    match run.code.filter(|_| run.outcome == "failed") {
        Some(code) => format!("{} {code}", run.outcome),
        None => run.outcome.to_owned(),
    }
}

fn scenario_name(job: &JobView, order_id: Option<&str>, run: &LastRun) -> String {
    format!(
        "replay of job {} (Order {}, delivery {}): {}",
        job.event_uuid,
        order_id.unwrap_or("unknown"),
        run.delivery,
        outcome_text(run)
    )
}

#[allow(clippy::too_many_arguments)]
fn description(
    job: &JobView,
    order_id: Option<&str>,
    run: &LastRun,
    counts: &Counts,
    whmcs: &WhmcsSeedOut,
    injections: &[InjectOut],
    expect: &ExpectOut,
    notes: &Notes,
) -> String {
    let mut lines = vec![
        format!(
            "Exported by `fulfilld orders export` from job {} of Order {} (replay id {}).",
            job.event_uuid,
            order_id.unwrap_or("unknown"),
            if job.replay_id.is_empty() {
                "unknown"
            } else {
                job.replay_id.as_str()
            }
        ),
        format!(
            "Its last run: delivery {}, claimed by {} at {}, ran {} and ended {}: {}",
            run.delivery,
            run.worker,
            crate::pipeline::rfc3339_ms(run.claimed_at_ms),
            if run.component.is_empty() {
                "an unnamed component"
            } else {
                run.component
            },
            outcome_text(run),
            crate::domain::clip(run.message, 300)
        ),
        format!(
            "Seed: org records: {} (from {} captured Salesforce query answers); WHMCS clients: {}, \
             products: {}, existing orders: {}{} (from {} captured WHMCS answers and the AddOrder \
             requests).",
            counts.records,
            counts.queries,
            whmcs.clients.len(),
            whmcs.products.len(),
            whmcs.orders.len(),
            whmcs
                .next_order_id
                .map(|id| format!(", next order id {id}"))
                .unwrap_or_default(),
            counts.billing_answers
        ),
    ];
    if !injections.is_empty() {
        let listed: Vec<String> = injections
            .iter()
            .map(|i| {
                let what = match (&i.http_status, i.timeout, &i.whmcs_error, &i.error) {
                    (Some(status), ..) => format!("HTTP {status}"),
                    (_, true, ..) => "timeout".to_owned(),
                    (_, _, Some(_), _) => "WHMCS error".to_owned(),
                    (.., Some(error)) => format!("{} {}", error.kind, error.code),
                    _ => String::new(),
                };
                format!(
                    "{} {} #{}: {what}",
                    i.op,
                    i.target.as_deref().unwrap_or("(any)"),
                    i.nth
                )
            })
            .collect();
        lines.push(format!(
            "Injected where the recording failed: {}.",
            listed.join("; ")
        ));
    }
    match &expect.calls {
        Some(calls) => lines.push(format!(
            "Expected: the result, {}the exact sequence of its {} calls{}.",
            if expect.code.is_some() {
                "the code, "
            } else {
                ""
            },
            calls.len(),
            if expect.whmcs_calls.is_empty() {
                ""
            } else {
                ", and the client, gateway and lines of each AddOrder"
            }
        )),
        None => lines.push(
            "Expected: that the Order is provisioned (result completed). The recorded run failed: \
             this scenario fails the same way until a component version handles the Order; \
             `orders export --expect recorded` pins what the run did instead."
                .to_owned(),
        ),
    }
    lines.push(format!("Not reproduced: {}.", notes.0.join("; ")));
    lines.join("\n")
}

/// `fulfilld orders export`: the scenario of a job's last run ([`scenario_from_job`]), written to
/// `path`. `false` (exit 1) when there is nothing to export, saying why.
pub async fn run(
    store: &dyn crate::store::Store,
    id: &str,
    event_uuid: Option<&str>,
    path: &std::path::Path,
    expect: Option<Expectation>,
    force: bool,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<bool> {
    use anyhow::Context as _;
    let Some(view) = crate::pipeline::journal::order_view(store, id).await? else {
        writeln!(out, "{}", crate::pipeline::journal::nothing_known(id))?;
        return Ok(false);
    };
    let job = match event_uuid {
        Some(uuid) => view.jobs.iter().find(|job| job.event_uuid == uuid),
        None => view.jobs.first(),
    };
    let Some(job) = job else {
        writeln!(
            out,
            "Order {} has no job with EventUuid {}; `fulfilld orders show {}` lists its jobs",
            view.order_id.as_deref().unwrap_or(id),
            crate::domain::clip(event_uuid.unwrap_or(""), 64),
            crate::domain::clip(id, 128)
        )?;
        return Ok(false);
    };
    let config = crate::config::exposed_from_env()?;
    let expect = expect.unwrap_or_else(|| {
        Expectation::default_for(
            job.record
                .as_ref()
                .map_or(job.state.as_str(), |r| r.outcome.as_str()),
        )
    });
    let text = match scenario_from_job(job, &config, expect) {
        Ok(text) => text,
        Err(err) => {
            writeln!(out, "cannot export job {}: {err}", job.event_uuid)?;
            return Ok(false);
        }
    };
    if path.exists() && !force {
        writeln!(out, "{} exists; pass --force to replace it", path.display())?;
        return Ok(false);
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    writeln!(
        out,
        "wrote {} from job {} ({}); replay it with: fulfilld test <component.wasm> {}",
        path.display(),
        job.event_uuid,
        job.state,
        path.display()
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeOrg;
    use crate::fake::whmcs::FakeWhmcs;
    use crate::store::JobRecord;
    use crate::testkit::scenario::ExpectedResult;
    use serde_json::json;

    const ORDER: &str = "801000000000001AAA";
    const UUID: &str = "0b5e6d1c-6a3e-4f7e-9d1a-2c4b8e9f0a11";
    const T0: i64 = 1_790_000_000_000;

    /// The default component's two queries, as the SDK writes them.
    fn order_soql() -> String {
        format!(
            "SELECT Id, OrderNumber, Status, AccountId, Pricebook2Id, Activation_Status__c, \
             WHMCS_Order_ID__c, Account.WHMCS_Client_ID__c FROM Order WHERE Id = '{ORDER}'"
        )
    }

    fn items_soql() -> String {
        format!(
            "SELECT Id, Quantity, UnitPrice, Product2Id, PricebookEntryId, Billing_Cycle__c, \
             Product2.Name, Product2.WH_Product_ID__c FROM OrderItem WHERE OrderId = '{ORDER}'"
        )
    }

    fn obj(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    /// Production as the fakes model it: Acme (WHMCS client 42, a Stripe card), an Activating
    /// Order with two items.
    fn production() -> (FakeOrg, FakeWhmcs) {
        let mut org = FakeOrg::new();
        for (sobject, record) in [
            (
                "Account",
                json!({"Id": "001000000000001AAA", "Name": "Acme Corp", "WHMCS_Client_ID__c": "42"}),
            ),
            (
                "Product2",
                json!({"Id": "01t000000000001AAA", "Name": "VPS Small", "WH_Product_ID__c": "11"}),
            ),
            (
                "Product2",
                json!({"Id": "01t000000000002AAA", "Name": "Managed Backup", "WH_Product_ID__c": "12"}),
            ),
            (
                "Order",
                json!({"Id": ORDER, "OrderNumber": "00000101", "Status": "Activated",
                "AccountId": "001000000000001AAA", "Pricebook2Id": "01s000000000001AAA",
                "EffectiveDate": "2026-01-01", "Activation_Status__c": "Activating"}),
            ),
            (
                "OrderItem",
                json!({"Id": "802000000000001AAA", "OrderId": ORDER,
                "Product2Id": "01t000000000001AAA", "PricebookEntryId": "01u000000000001AAA",
                "Quantity": 1.0, "UnitPrice": 20.0, "Billing_Cycle__c": "Monthly"}),
            ),
            (
                "OrderItem",
                json!({"Id": "802000000000002AAA", "OrderId": ORDER,
                "Product2Id": "01t000000000002AAA", "PricebookEntryId": "01u000000000002AAA",
                "Quantity": 2.0, "UnitPrice": 5.0, "Billing_Cycle__c": "Annually"}),
            ),
        ] {
            org.insert(sobject, obj(record)).unwrap();
        }
        let mut whmcs = FakeWhmcs::new();
        whmcs.add_client(FakeClient {
            id: 42,
            email: "billing@acme.example".into(),
            default_gateway: "stripe".into(),
            paymethods: vec![FakePayMethod {
                id: 7,
                kind: "RemoteCreditCard".into(),
                gateway_name: "stripe".into(),
                description: "Visa ending 4242".into(),
            }],
            ..FakeClient::default()
        });
        for (pid, name) in [(11, "VPS Small"), (12, "Managed Backup")] {
            whmcs.add_product(FakeProduct {
                pid,
                name: name.into(),
                cycles: Vec::new(),
            });
        }
        whmcs.set_next_order_id(1042);
        (org, whmcs)
    }

    fn whmcs_answer(whmcs: &mut FakeWhmcs, action: &str, params: &Value) -> Value {
        let mut form = vec![("action".to_owned(), action.to_owned())];
        form.extend(crate::whmcs::encode_params(&obj(params.clone())).unwrap());
        whmcs.handle(&form)
    }

    fn entry(at_ms: i64, event: JournalEvent) -> JournalEntry {
        JournalEntry {
            at_ms,
            replica: "r1".into(),
            event,
        }
    }

    fn query(soql: &str, answer: Option<Value>) -> JournalEvent {
        JournalEvent::Call {
            interface: "salesforce".into(),
            action: "query".into(),
            target: soql.into(),
            duration_ms: 40,
            outcome: "ok".into(),
            code: None,
            request: None,
            answer,
            delivery: 0,
        }
    }

    fn update(fields: Value) -> JournalEvent {
        JournalEvent::Call {
            interface: "salesforce".into(),
            action: "update".into(),
            target: format!("Order/{ORDER}"),
            duration_ms: 30,
            outcome: "ok".into(),
            code: None,
            request: Some(fields),
            answer: None,
            delivery: 0,
        }
    }

    fn billing(action: &str, params: Value, answer: Result<Value, (&str, &str)>) -> JournalEvent {
        let (outcome, code, answer) = match answer {
            Ok(answer) => ("ok".to_owned(), None, Some(answer)),
            Err((kind, code)) => (kind.to_owned(), Some(code.to_owned()), None),
        };
        JournalEvent::Call {
            interface: "billing".into(),
            action: action.into(),
            target: action.into(),
            duration_ms: 120,
            outcome,
            code,
            request: Some(params),
            answer,
            delivery: 0,
        }
    }

    /// `call` as it failed with `kind` / `code`.
    fn failing(mut call: JournalEvent, kind: &str, failed_code: &str) -> JournalEvent {
        if let JournalEvent::Call {
            outcome,
            code,
            answer,
            ..
        } = &mut call
        {
            *outcome = kind.into();
            *code = Some(failed_code.into());
            *answer = None;
        }
        call
    }

    fn finished(outcome: &str, code: Option<&str>, message: &str) -> JournalEvent {
        JournalEvent::Finished {
            delivery: 1,
            outcome: outcome.into(),
            code: code.map(str::to_owned),
            message: message.into(),
            component: "fulfillment@0.4.0".into(),
            elapsed_ms: 900,
        }
    }

    /// A job whose last run (delivery `delivery`) made `calls` and ended as `end`.
    fn job(delivery: u32, calls: Vec<JournalEvent>, end: Vec<JournalEvent>) -> JobView {
        let mut journal = vec![
            entry(
                T0 - 100,
                JournalEvent::Enqueued {
                    replay_id: "4711".into(),
                },
            ),
            entry(
                T0,
                JournalEvent::Claimed {
                    worker: "r1-w0".into(),
                    delivery,
                },
            ),
        ];
        // The end entries are this run's: a `finished` carries its delivery.
        let end = end.into_iter().map(|e| match e {
            JournalEvent::Finished {
                outcome,
                code,
                message,
                component,
                elapsed_ms,
                ..
            } => JournalEvent::Finished {
                delivery,
                outcome,
                code,
                message,
                component,
                elapsed_ms,
            },
            other => other,
        });
        journal.extend(calls.into_iter().chain(end).map(|e| entry(T0 + 1000, e)));
        JobView {
            event_uuid: UUID.into(),
            replay_id: "4711".into(),
            order_id: Some(ORDER.into()),
            state: "completed".into(),
            record: None,
            journal,
        }
    }

    fn config() -> BTreeMap<String, String> {
        BTreeMap::from([(
            "PORTAL_PRICEBOOK_ID".to_owned(),
            "01s000000000001AAA".to_owned(),
        )])
    }

    /// The default component's happy path against `production()`, captured.
    fn happy_path() -> (JobView, FakeOrg, FakeWhmcs) {
        let (org, mut whmcs) = production();
        let order = org.query(&order_soql()).unwrap();
        let items = org.query(&items_soql()).unwrap();
        let pay = json!({"clientid": 42});
        let add = json!({"clientid": 42, "paymentmethod": "stripe", "pid": [11, 12],
            "billingcycle": ["monthly", "annually"], "qty": [1, 2],
            "noemail": 0, "noinvoice": 0, "noinvoiceemail": 0});
        let accept = json!({"orderid": 1042, "autosetup": 1, "sendemail": 1});
        let calls = vec![
            query(&order_soql(), Some(order)),
            billing(
                "GetPayMethods",
                pay.clone(),
                Ok(whmcs_answer(&mut whmcs, "GetPayMethods", &pay)),
            ),
            update(json!({"Activation_Status__c": "Activating", "Activation_Error_Code__c": null})),
            query(&items_soql(), Some(items)),
            billing(
                "AddOrder",
                add.clone(),
                Ok(whmcs_answer(&mut whmcs, "AddOrder", &add)),
            ),
            update(json!({"WHMCS_Order_ID__c": "1042"})),
            billing(
                "AcceptOrder",
                accept.clone(),
                Ok(whmcs_answer(&mut whmcs, "AcceptOrder", &accept)),
            ),
            update(json!({"Activation_Status__c": "Activated", "WHMCS_Order_ID__c": "1042"})),
        ];
        let (org, whmcs) = production();
        let view = job(
            1,
            calls,
            vec![finished("completed", None, "WHMCS order 1042 accepted")],
        );
        (view, org, whmcs)
    }

    fn records_of(answer: &Value) -> Vec<Value> {
        answer["records"].as_array().unwrap().clone()
    }

    #[test]
    fn a_captured_run_seeds_what_it_read_and_expects_what_it_did() {
        let (view, org, whmcs) = happy_path();
        let text = scenario_from_job(&view, &config(), Expectation::Recorded).unwrap();
        assert!(
            text.starts_with("# Exported by `fulfilld orders export` from job"),
            "{text}"
        );
        assert!(!text.contains("\nseed ="), "{text}");
        let scenario = Scenario::parse(&text).unwrap();
        assert!(scenario.seed.is_none());
        assert_eq!(scenario.config, config());
        assert_eq!(scenario.now_ms, Some(T0));
        assert!(scenario.schema.is_empty(), "{:?}", scenario.schema);
        assert!(
            scenario.description.contains("fulfillment@0.4.0"),
            "{}",
            scenario.description
        );
        assert!(scenario.description.contains("completed"));

        // The org: the Order as it was at the start, its Account (reached as a nested parent),
        // its items (with the OrderId the query filtered on) and their products.
        let order = &scenario.org["Order"][0];
        assert_eq!(order["Id"], ORDER);
        assert_eq!(order["Activation_Status__c"], "Activating");
        assert_eq!(order["AccountId"], "001000000000001AAA");
        assert!(
            order.get("WHMCS_Order_ID__c").is_none(),
            "null is left out: {order:?}"
        );
        assert_eq!(scenario.org["Account"][0]["Id"], "001000000000001AAA");
        assert_eq!(scenario.org["Account"][0]["WHMCS_Client_ID__c"], "42");
        let items = &scenario.org["OrderItem"];
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(|i| i["OrderId"] == ORDER), "{items:?}");
        assert_eq!(scenario.org["Product2"].len(), 2);

        // WHMCS: the client with its card, the products AddOrder sent, named from Product2.
        assert_eq!(scenario.whmcs.clients.len(), 1);
        assert_eq!(scenario.whmcs.clients[0].id, 42);
        assert_eq!(
            scenario.whmcs.clients[0].paymethods[0].gateway_name,
            "stripe"
        );
        let products: Vec<(u64, &str)> = scenario
            .whmcs
            .products
            .iter()
            .map(|p| (p.pid, p.name.as_str()))
            .collect();
        assert_eq!(products, [(11, "VPS Small"), (12, "Managed Backup")]);
        assert_eq!(scenario.whmcs.next_order_id, Some(1042));
        assert!(
            scenario.whmcs.orders.is_empty(),
            "the order this run created was not there before"
        );

        let run = &scenario.runs[0];
        assert_eq!(run.event["OrderId__c"], ORDER);
        assert_eq!(run.event_uuid.as_deref(), Some(UUID));
        assert_eq!(run.delivery, Some(1));
        assert!(run.inject.is_empty());
        assert_eq!(run.expect.result, ExpectedResult::Completed);
        assert_eq!(run.expect.code, None);
        assert_eq!(
            run.expect.calls.as_deref().unwrap(),
            [
                "salesforce.query Order",
                "billing.call GetPayMethods",
                "salesforce.update Order",
                "salesforce.query OrderItem",
                "billing.call AddOrder",
                "salesforce.update Order",
                "billing.call AcceptOrder",
                "salesforce.update Order",
            ]
        );
        let add = &run.expect.whmcs_calls[0];
        assert_eq!(add.action, "AddOrder");
        assert_eq!(add.params["pid"], json!([11, 12]));
        assert_eq!(add.params["qty"], json!([1, 2]));
        assert!(
            add.params.get("noemail").is_none(),
            "only the order's content is checked"
        );

        // The replay's fakes answer the run's reads as production did.
        let host = scenario.seed().unwrap();
        for soql in [order_soql(), items_soql()] {
            let replayed = host.with_org(|o| o.query(&soql)).unwrap();
            assert_eq!(
                records_of(&replayed),
                records_of(&org.query(&soql).unwrap()),
                "{soql}"
            );
        }
        let mut replayed_whmcs = host.with_whmcs(|w| w.clone());
        let mut recorded_whmcs = whmcs;
        let pay = json!({"clientid": 42});
        assert_eq!(
            whmcs_answer(&mut replayed_whmcs, "GetPayMethods", &pay),
            whmcs_answer(&mut recorded_whmcs, "GetPayMethods", &pay)
        );
        let add = json!({"clientid": 42, "paymentmethod": "stripe", "pid": [11, 12]});
        assert_eq!(
            whmcs_answer(&mut replayed_whmcs, "AddOrder", &add)["orderid"],
            1042
        );
    }

    #[test]
    fn nested_parents_and_child_records_are_linked_and_the_first_answer_wins() {
        let soql = format!(
            "SELECT Id, Activation_Status__c, Service_Tier__c, Account.WHMCS_Client_ID__c, \
             Plan__r.Name, (SELECT Id, Quantity FROM OrderItems) FROM Order WHERE Id = '{ORDER}'"
        );
        let first = json!({"totalSize": 1, "done": true, "records": [{
            "attributes": {"type": "Order", "url": format!("/services/data/v66.0/sobjects/Order/{ORDER}")},
            "Id": ORDER,
            "Activation_Status__c": "Activating",
            "Service_Tier__c": "[redacted]",
            "Account": {"attributes": {"type": "Account"}, "WHMCS_Client_ID__c": "42"},
            "Plan__r": {"attributes": {"type": "Plan__c"}, "Name": "Gold"},
            "OrderItems": {"totalSize": 1, "done": true, "records": [
                {"attributes": {"type": "OrderItem"}, "Id": "802000000000001AAA", "Quantity": 2.0}
            ]}
        }]});
        // Read again after the run wrote Activated: the first answer's value stays.
        let second = json!({"totalSize": 1, "done": true, "records": [{
            "attributes": {"type": "Order"}, "Id": ORDER, "Activation_Status__c": "Activated",
            "WHMCS_Order_ID__c": "1042"
        }]});
        let calls = vec![
            query(&soql, Some(first)),
            update(json!({"Activation_Status__c": "Activated", "WHMCS_Order_ID__c": "1042"})),
            query(
                &format!(
                    "SELECT Id, Activation_Status__c, WHMCS_Order_ID__c FROM Order WHERE Id = '{ORDER}'"
                ),
                Some(second),
            ),
        ];
        let view = job(1, calls, vec![finished("completed", None, "done")]);
        let text = scenario_from_job(&view, &BTreeMap::new(), Expectation::Recorded).unwrap();
        let scenario = Scenario::parse(&text).unwrap();

        let order = &scenario.org["Order"][0];
        assert_eq!(order["Activation_Status__c"], "Activating");
        assert!(
            order.get("WHMCS_Order_ID__c").is_none(),
            "written by the run before it was read: {order:?}"
        );
        assert_eq!(
            order["Service_Tier__c"], "[redacted]",
            "redacted values are kept"
        );
        // The Account had no Id in the answer and the Order no AccountId: a stand-in links them.
        let account = &scenario.org["Account"][0];
        let account_id = account["Id"].as_str().unwrap();
        assert!(account_id.starts_with("001EXP"), "{account_id}");
        assert_eq!(
            crate::domain::record_id_18(account_id).as_deref(),
            Some(account_id)
        );
        assert_eq!(order["AccountId"], account_id);
        assert_eq!(account["WHMCS_Client_ID__c"], "42");
        // The custom parent and the fields the shipped package lacks are declared.
        assert_eq!(scenario.schema["Order.Service_Tier__c"], "Text(255)");
        assert_eq!(scenario.schema["Order.Plan__c"], "Lookup(Plan__c)");
        assert_eq!(order["Plan__c"], scenario.org["Plan__c"][0]["Id"]);
        // The child record got its parent lookup.
        assert_eq!(scenario.org["OrderItem"][0]["OrderId"], ORDER);

        let host = scenario.seed().unwrap();
        let replayed = host.with_org(|o| o.query(&soql)).unwrap();
        let record = &replayed["records"][0];
        assert_eq!(record["Account"]["WHMCS_Client_ID__c"], "42");
        assert_eq!(record["Plan__r"]["Name"], "Gold");
        assert_eq!(record["OrderItems"]["records"][0]["Quantity"], 2.0);
        assert!(
            scenario
                .description
                .contains("Order.WHMCS_Order_ID__c was first read after this run wrote it"),
            "{}",
            scenario.description
        );
    }

    #[tokio::test]
    async fn failed_calls_are_injected_at_the_call_the_test_kit_sees() {
        let (_, mut whmcs) = production();
        let (org, _) = production();
        let pay = json!({"clientid": 42});
        let accept = json!({"orderid": 990, "autosetup": 1, "sendemail": 1});
        let orders = json!({"id": 990});
        let pending = FakeOrder {
            id: 990,
            client_id: 42,
            status: "Pending".into(),
            payment_method: "stripe".into(),
            items: vec![FakeOrderItem {
                pid: 11,
                billing_cycle: "monthly".into(),
                qty: 1,
            }],
            service_ids: vec![501],
            invoice_id: 77,
        };
        whmcs.add_order(pending.clone());
        let calls = vec![
            query(&order_soql(), Some(org.query(&order_soql()).unwrap())),
            billing(
                "GetPayMethods",
                pay.clone(),
                Ok(whmcs_answer(&mut whmcs, "GetPayMethods", &pay)),
            ),
            billing(
                "GetOrders",
                orders.clone(),
                Ok(whmcs_answer(&mut whmcs, "GetOrders", &orders)),
            ),
            billing("AcceptOrder", accept.clone(), Err(("http-status", "503"))),
            billing(
                "AcceptOrder",
                accept.clone(),
                Err(("rejected", "WHMCS_ERROR")),
            ),
            billing("GetOrders", orders.clone(), Err(("timeout", "ETIMEOUT"))),
            billing(
                "AcceptOrder",
                accept.clone(),
                Ok(json!({"result": "success"})),
            ),
            billing(
                "AcceptOrder",
                accept.clone(),
                Err(("network", "ECONNRESET")),
            ),
            JournalEvent::Call {
                interface: "salesforce".into(),
                action: "update".into(),
                target: "Account/001000000000001AAA".into(),
                duration_ms: 0,
                outcome: "forbidden".into(),
                code: Some("FORBIDDEN".into()),
                request: Some(json!({"Name": "x"})),
                answer: None,
                delivery: 0,
            },
            failing(
                update(json!({"Activation_Status__c": "Failed"})),
                "http-status",
                "503",
            ),
        ];
        let view = job(
            2,
            calls,
            vec![finished(
                "failed",
                Some("ECONNRESET"),
                "AcceptOrder: connection reset by peer",
            )],
        );
        let text = scenario_from_job(&view, &config(), Expectation::Recorded).unwrap();
        let scenario = Scenario::parse(&text).unwrap();
        let run = &scenario.runs[0];
        assert_eq!(run.delivery, Some(2));
        assert_eq!(run.expect.result, ExpectedResult::Failed);
        assert_eq!(run.expect.code.as_deref(), Some("ECONNRESET"));
        assert_eq!(run.expect.calls.as_ref().unwrap().len(), 10);
        assert_eq!(
            run.expect.calls.as_ref().unwrap()[8],
            "salesforce.update Account"
        );

        let seen: Vec<(&str, Option<&str>, u32)> = run
            .inject
            .iter()
            .map(|i| (i.op.as_str(), i.target.as_deref(), i.nth))
            .collect();
        assert_eq!(
            seen,
            [
                ("billing.call", Some("AcceptOrder"), 1),
                ("billing.call", Some("AcceptOrder"), 1),
                ("billing.call", Some("GetOrders"), 2),
                ("billing.call", Some("AcceptOrder"), 2),
                ("salesforce.update", Some("Order"), 1),
            ],
            "the refused Account update is the gate's: not injected"
        );
        assert_eq!(run.inject[0].http_status, Some(503));
        assert_eq!(
            run.inject[1].whmcs_error.as_deref(),
            Some(WHMCS_NOT_PENDING)
        );
        assert!(run.inject[2].timeout);
        let reset = run.inject[3].error.as_ref().unwrap();
        assert_eq!(
            (reset.kind, reset.code.as_str()),
            (ErrorKind::Network, "ECONNRESET")
        );
        assert_eq!(
            reset.message, "connection reset by peer",
            "quoted by the run's message"
        );
        assert_eq!(run.inject[4].http_status, Some(503));

        // The existing Pending order is seeded as GetOrders listed it.
        assert_eq!(scenario.whmcs.orders.len(), 1);
        let seeded = &scenario.whmcs.orders[0];
        assert_eq!(
            (seeded.id, seeded.client_id, seeded.status.as_str()),
            (990, 42, "Pending")
        );
        assert_eq!(seeded.items[0].billing_cycle, "monthly");
        // GetOrders names the line's product, not its pid: a stand-in product carries the name.
        assert_eq!(seeded.items[0].pid, STAND_IN_PID);
        assert_eq!(scenario.whmcs.products[0].name, "VPS Small");

        // Armed in the test kit, they fail exactly the recorded calls.
        use crate::services::Services;
        let host = scenario.seed().unwrap();
        for injection in &run.inject {
            host.inject(injection.clone());
        }
        let params = obj(accept);
        let mut outcomes = Vec::new();
        for action in [
            "GetOrders",
            "AcceptOrder",
            "AcceptOrder",
            "GetOrders",
            "AcceptOrder",
            "AcceptOrder",
        ] {
            let params = if action == "GetOrders" {
                obj(orders.clone())
            } else {
                params.clone()
            };
            outcomes.push(match host.billing_call(action, &params).await {
                Ok(_) => "ok".to_owned(),
                Err(error) => error.code,
            });
        }
        assert_eq!(
            outcomes,
            ["ok", "503", "WHMCS_ERROR", "ETIMEOUT", "ok", "ECONNRESET"]
        );
    }

    #[test]
    fn without_capture_there_is_nothing_to_seed() {
        let calls = vec![
            query(&order_soql(), None),
            billing("GetPayMethods", json!({}), Ok(json!({}))),
        ];
        // Capture off: no request, no answer.
        let calls: Vec<JournalEvent> = calls
            .into_iter()
            .map(|mut call| {
                if let JournalEvent::Call {
                    request, answer, ..
                } = &mut call
                {
                    *request = None;
                    *answer = None;
                }
                call
            })
            .collect();
        let view = job(
            1,
            calls,
            vec![finished("failed", Some("409"), "Payment method missing")],
        );
        let error = scenario_from_job(&view, &config(), Expectation::Recorded).unwrap_err();
        assert!(matches!(error, ExportError::NotCaptured(_)), "{error}");
        let text = error.to_string();
        assert!(
            text.contains(UUID) && text.contains("FULFILLD_JOURNAL_CAPTURE off"),
            "{text}"
        );
    }

    #[test]
    fn a_refused_addorder_is_left_to_the_replay_and_a_failed_job_expects_completion() {
        let (org, mut whmcs) = production();
        let pay = json!({"clientid": 42});
        let add = json!({"clientid": 42, "paymentmethod": "stripe", "pid": [11], "billingcycle": ["month"]});
        let calls = vec![
            query(&order_soql(), Some(org.query(&order_soql()).unwrap())),
            billing(
                "GetPayMethods",
                pay.clone(),
                Ok(whmcs_answer(&mut whmcs, "GetPayMethods", &pay)),
            ),
            billing("AddOrder", add, Err(("rejected", "WHMCS_ERROR"))),
        ];
        let view = job(
            1,
            calls,
            vec![finished(
                "failed",
                Some("WHMCS_ERROR"),
                "AddOrder: No items added to cart so order cannot proceed",
            )],
        );
        // A bug report by default for a failed job: provisioned is what is expected.
        let text = scenario_from_job(&view, &config(), Expectation::Completed).unwrap();
        let scenario = Scenario::parse(&text).unwrap();
        let run = &scenario.runs[0];
        assert!(run.inject.is_empty(), "{:?}", run.inject);
        assert_eq!(run.expect.result, ExpectedResult::Completed);
        assert_eq!(run.expect.code, None);
        assert!(run.expect.calls.is_none());
        assert!(text.contains("(AddOrder) was refused by WHMCS"), "{text}");
        // Pinned, it expects the failure and the calls.
        let text = scenario_from_job(&view, &config(), Expectation::Recorded).unwrap();
        let run = &Scenario::parse(&text).unwrap().runs[0];
        assert_eq!(run.expect.result, ExpectedResult::Failed);
        assert_eq!(run.expect.code.as_deref(), Some("WHMCS_ERROR"));
        assert_eq!(Expectation::default_for("failed"), Expectation::Completed);
        assert_eq!(Expectation::default_for("completed"), Expectation::Recorded);
    }

    #[test]
    fn a_reclaimed_runs_late_calls_are_not_mixed_into_the_next_run() {
        let (org, _) = production();
        let mut view = job(
            2,
            vec![with_delivery(
                query(&order_soql(), Some(org.query(&order_soql()).unwrap())),
                2,
            )],
            vec![finished("completed", None, "done")],
        );
        // The first run's worker journaled its calls (and its end) after the second run's claim.
        view.journal.push(entry(
            T0 + 2000,
            with_delivery(
                billing(
                    "AddOrder",
                    json!({"clientid": 42}),
                    Ok(json!({"orderid": 7})),
                ),
                1,
            ),
        ));
        let text = scenario_from_job(&view, &config(), Expectation::Recorded).unwrap();
        let scenario = Scenario::parse(&text).unwrap();
        assert_eq!(
            scenario.runs[0].expect.calls.as_ref().unwrap(),
            &["salesforce.query Order".to_owned()],
            "{text}"
        );
        assert_eq!(
            scenario.whmcs.next_order_id, None,
            "the late AddOrder seeds nothing"
        );
    }

    fn with_delivery(mut call: JournalEvent, run: u32) -> JournalEvent {
        if let JournalEvent::Call { delivery, .. } = &mut call {
            *delivery = run;
        }
        call
    }

    #[test]
    fn a_run_without_an_outcome_has_nothing_to_expect() {
        let abandoned = job(
            3,
            vec![],
            vec![finished(
                "abandoned",
                Some("COMPONENT_BUSY"),
                "no free instance",
            )],
        );
        let error = scenario_from_job(&abandoned, &config(), Expectation::Recorded).unwrap_err();
        assert!(
            matches!(error, ExportError::NoOutcome { delivery: 3, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("abandoned"), "{error}");

        let dead = job(
            5,
            vec![],
            vec![
                finished("failed", Some("COMPONENT_TRAP"), "panicked"),
                JournalEvent::DeadLettered {
                    reason: "COMPONENT_TRAP: panicked".into(),
                },
            ],
        );
        let error = scenario_from_job(&dead, &config(), Expectation::Recorded).unwrap_err();
        assert!(error.to_string().contains("dead letters"), "{error}");

        let running = job(1, vec![], vec![]);
        let error = scenario_from_job(&running, &config(), Expectation::Recorded).unwrap_err();
        assert!(error.to_string().contains("has not finished"), "{error}");

        let mut never = job(1, vec![], vec![]);
        never.journal.truncate(1);
        assert!(matches!(
            scenario_from_job(&never, &config(), Expectation::Recorded),
            Err(ExportError::NothingToExport(_))
        ));
    }

    #[test]
    fn the_last_run_is_exported_and_a_body_not_kept_is_refused() {
        let (mut view, _, _) = happy_path();
        // An earlier run, abandoned, before the one that completed.
        let mut earlier = vec![
            entry(
                T0 - 50,
                JournalEvent::Claimed {
                    worker: "r0-w0".into(),
                    delivery: 1,
                },
            ),
            entry(T0 - 40, finished("abandoned", None, "claim lost")),
        ];
        earlier.extend(view.journal.drain(1..));
        view.journal.extend(earlier);
        assert!(scenario_from_job(&view, &config(), Expectation::Recorded).is_ok());

        let big = job(
            1,
            vec![query(
                &order_soql(),
                Some(Value::String(
                    "[not kept: 70000 bytes of JSON, over the journal's 65536]".into(),
                )),
            )],
            vec![finished("completed", None, "x")],
        );
        let error = scenario_from_job(&big, &config(), Expectation::Recorded).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("answer of call 1 (salesforce.query Order) was over"),
            "{error}"
        );
    }

    #[test]
    fn a_job_record_names_the_order_when_the_view_does_not() {
        let (mut view, _, _) = happy_path();
        view.order_id = None;
        view.record = Some(JobRecord {
            event_uuid: UUID.into(),
            replay_id: "4711".into(),
            order_id: Some(ORDER.into()),
            outcome: "completed".into(),
            code: None,
            message: String::new(),
            component: "fulfillment@0.4.0".into(),
            component_sha256: String::new(),
            deliveries: 1,
            finished_at_ms: T0,
        });
        let scenario =
            Scenario::parse(&scenario_from_job(&view, &config(), Expectation::Recorded).unwrap())
                .unwrap();
        assert_eq!(scenario.runs[0].event["OrderId__c"], ORDER);
    }

    #[test]
    fn a_record_written_but_never_read_is_seeded_so_the_write_succeeds_again() {
        let fields = json!({"Activation_Status__c": "Failed", "Custom_Note__c": "checked"});
        let view = job(
            1,
            vec![update(fields.clone())],
            vec![finished("failed", Some("X"), "x")],
        );
        let scenario =
            Scenario::parse(&scenario_from_job(&view, &config(), Expectation::Recorded).unwrap())
                .unwrap();
        assert_eq!(scenario.org["Order"], [obj(json!({"Id": ORDER}))]);
        assert_eq!(scenario.schema["Order.Custom_Note__c"], "Text(255)");
        let host = scenario.seed().unwrap();
        host.with_org(|org| org.update("Order", ORDER, &obj(fields)))
            .unwrap();
        assert!(scenario.description.contains("written but never read"));
    }

    #[test]
    fn where_equalities_read_plain_conjunctions_only() {
        assert_eq!(
            where_equalities(
                "SELECT Id FROM OrderItem WHERE OrderId = '801\\'x' AND Quantity = 2 ORDER BY Id LIMIT 5"
            ),
            vec![
                ("OrderId".to_owned(), json!("801'x")),
                ("Quantity".to_owned(), json!(2))
            ]
        );
        assert_eq!(
            where_equalities(
                "SELECT Id, (SELECT Id FROM OrderItems WHERE Quantity = 1) FROM Order WHERE Status IN ('Activated') AND IsDeleted = false"
            ),
            vec![
                ("Status".to_owned(), json!("Activated")),
                ("IsDeleted".to_owned(), json!(false))
            ]
        );
        assert!(
            where_equalities("SELECT Id FROM Order WHERE Id = '801' OR Status = 'x'").is_empty()
        );
        assert!(
            where_equalities("SELECT Id FROM Order WHERE Id = '801'").is_empty(),
            "Id is the record's own"
        );
        assert!(where_equalities("SELECT Id FROM Order WHERE Name = 'open").is_empty());
        assert!(
            where_equalities("SELECT Id FROM Order WHERE WHMCS_Order_ID__c IN ('1', '2')")
                .is_empty()
        );
    }
}
