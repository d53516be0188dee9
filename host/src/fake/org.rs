//! An in-memory Salesforce org: records by sObject, a SOQL subset (see [`super::soql`]) and
//! updates, answering with Salesforce's shapes and error codes.
//!
//! The org has a schema ([`super::schema`]): the standard objects the flow uses and the custom
//! fields of the shipped `salesforce/` package, extended or replaced by the caller. A query or an
//! update naming an sObject, a field or a relationship the schema does not define is refused
//! with Salesforce's `INVALID_TYPE` / `INVALID_FIELD`; a defined field a record does not hold
//! reads as `null`. Updates honour the field types: restricted picklists, text lengths,
//! read-only fields. Number fields compare numerically, and a quoted literal against one is
//! refused as Salesforce refuses it.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::schema::{FieldDef, FieldType, ObjectDef, Schema};
use super::soql::{self, CmpOp, Expr, Literal, OrderKey, Query, SelectItem};
use crate::error::{CallError, ErrorKind};

/// API version used in the `attributes.url` of returned records.
const API_VERSION: &str = "v66.0";

/// Key prefix of ids the fake assigns to sObjects it has no prefix for.
const DEFAULT_PREFIX: &str = "a00";

/// An in-memory org.
#[derive(Debug, Clone, Default)]
pub struct FakeOrg {
    tables: Vec<Table>,
    next_seq: u64,
    schema: Schema,
}

#[derive(Debug, Clone)]
struct Table {
    name: String,
    records: Vec<Map<String, Value>>,
    /// Record positions by id, so lookups by id (as Salesforce's own) do not scan the table:
    /// by the case-sensitive 15-character form, and by the lowercased 18-character form.
    by_id15: HashMap<String, usize>,
    by_id18: HashMap<String, usize>,
}

impl Table {
    fn new(name: String) -> Table {
        Table {
            name,
            records: Vec::new(),
            by_id15: HashMap::new(),
            by_id18: HashMap::new(),
        }
    }

    fn push(&mut self, record: Map<String, Value>) {
        let position = self.records.len();
        if let Some(id) = record_id(&record) {
            let (key15, key18) = index_keys(id);
            self.by_id15.insert(key15, position);
            if let Some(key18) = key18 {
                self.by_id18.insert(key18, position);
            }
        }
        self.records.push(record);
    }

    /// The position of the record whose id matches `id` under [`id_eq`].
    fn position(&self, id: &str) -> Option<usize> {
        let (key15, key18) = index_keys(id);
        let matches = |&position: &usize| {
            self.records
                .get(position)
                .and_then(record_id)
                .is_some_and(|rid| id_eq(rid, id))
        };
        self.by_id15
            .get(&key15)
            .filter(|p| matches(p))
            .or_else(|| {
                key18
                    .and_then(|k| self.by_id18.get(&k))
                    .filter(|p| matches(p))
            })
            .copied()
    }

    fn by_id(&self, id: &str) -> Option<&Map<String, Value>> {
        self.position(id).and_then(|p| self.records.get(p))
    }
}

/// The index keys of an id: its 15-character form (the whole id when it is not a Salesforce id)
/// and, for an 18-character id (or a 15-character one, extended), its lowercased 18-character form.
fn index_keys(id: &str) -> (String, Option<String>) {
    if looks_like_sf_id(id) {
        let id15 = id.get(..15).unwrap_or(id).to_owned();
        let id18 = if id.len() == 18 {
            id.to_ascii_lowercase()
        } else {
            format!("{id15}{}", id_suffix(&id15)).to_ascii_lowercase()
        };
        (id15, Some(id18))
    } else {
        let key18 = (id.len() == 18).then(|| id.to_ascii_lowercase());
        (id.to_owned(), key18)
    }
}

impl FakeOrg {
    /// An empty org with the shipped schema ([`Schema::shipped`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty org with `schema`.
    pub fn with_schema(schema: Schema) -> Self {
        FakeOrg {
            schema,
            ..Self::default()
        }
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Extends the schema, e.g. with a scenario's own fields.
    pub fn schema_mut(&mut self) -> &mut Schema {
        &mut self.schema
    }

    /// Adds a record. Keeps its `Id` when given, otherwise assigns an 18-character id with the
    /// sObject's key prefix. Returns the id.
    pub fn insert(
        &mut self,
        sobject: &str,
        record: Map<String, Value>,
    ) -> Result<String, CallError> {
        if sobject.is_empty()
            || !sobject
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(invalid_type(sobject));
        }
        let object = self
            .schema
            .object(sobject)
            .ok_or_else(|| invalid_type(sobject))?;
        if let Some(unknown) = record.keys().find(|k| object.field(k).is_none()) {
            return Err(no_such_column_update(unknown, &object.name));
        }
        let name = object.name.clone();
        let given = record
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Id"))
            .map(|(_, v)| v.clone());
        let id = match given {
            None | Some(Value::Null) => self.new_id(sobject),
            Some(Value::String(id)) if valid_id(&id) => {
                if self.find_by_id(&id).is_some() {
                    return Err(CallError::rejected(
                        "DUPLICATE_VALUE",
                        format!(
                            "duplicate value found: Id duplicates value on record with id: {id}"
                        ),
                    ));
                }
                id
            }
            Some(other) => {
                return Err(CallError::rejected(
                    "MALFORMED_ID",
                    format!("malformed id {other}"),
                ));
            }
        };
        let mut stored = Map::with_capacity(record.len() + 1);
        stored.insert("Id".into(), Value::String(id.clone()));
        stored.extend(
            record
                .into_iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("Id")),
        );
        match self.tables.iter_mut().find(|t| t.name == name) {
            Some(table) => table.push(stored),
            None => {
                let mut table = Table::new(name);
                table.push(stored);
                self.tables.push(table);
            }
        }
        Ok(id)
    }

    /// The record of `sobject` with `id` (15- or 18-character form).
    pub fn get(&self, sobject: &str, id: &str) -> Option<&Map<String, Value>> {
        self.table(sobject)?.by_id(id)
    }

    /// All records of `sobject`, in insertion order.
    pub fn records(&self, sobject: &str) -> Vec<&Map<String, Value>> {
        self.table(sobject)
            .map(|t| t.records.iter().collect())
            .unwrap_or_default()
    }

    /// Names of the sObjects that hold records, in order of first insertion.
    pub fn sobjects(&self) -> Vec<&str> {
        self.tables.iter().map(|t| t.name.as_str()).collect()
    }

    /// Runs a SOQL query: `{"totalSize": N, "done": true, "records": [...]}`.
    pub fn query(&self, soql: &str) -> Result<Value, CallError> {
        let query = soql::parse(soql)?;
        let sobject = self
            .canonical_sobject(&query.from)
            .ok_or_else(|| invalid_type(&query.from))?
            .to_owned();
        self.check_query(&query, &sobject)?;
        let records = self.run(&query, &sobject, None)?;
        Ok(json!({"totalSize": records.len(), "done": true, "records": records}))
    }

    /// Writes `fields` into record `id` of `sobject`: all or nothing, like Salesforce.
    pub fn update(
        &mut self,
        sobject: &str,
        id: &str,
        fields: &Map<String, Value>,
    ) -> Result<(), CallError> {
        let Some(name) = self.canonical_sobject(sobject).map(str::to_owned) else {
            return Err(invalid_type(sobject));
        };
        for (field, value) in fields {
            if field.eq_ignore_ascii_case("Id") {
                return Err(CallError::rejected(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    "Unable to create/update fields: Id. Please check the security settings of \
                     this field and verify that it is read/write for your profile or permission set.",
                ));
            }
            let object = self
                .schema
                .object(&name)
                .ok_or_else(|| invalid_type(&name))?;
            let Some(def) = object.field(field) else {
                return Err(no_such_column_update(field, &name));
            };
            if value.is_object() || value.is_array() {
                return Err(CallError::rejected(
                    "JSON_PARSER_ERROR",
                    format!("Cannot deserialize instance of {field} from an object or array"),
                ));
            }
            check_value(def, value)?;
        }
        let record = self
            .tables
            .iter_mut()
            .find(|t| t.name == name)
            .and_then(|t| {
                let position = t.position(id)?;
                t.records.get_mut(position)
            })
            .ok_or_else(|| {
                CallError::rejected(
                    "NOT_FOUND",
                    format!("Provided external ID field does not exist or is not accessible: {id}"),
                )
            })?;
        for (field, value) in fields {
            let key = record
                .keys()
                .find(|k| k.eq_ignore_ascii_case(field))
                .cloned()
                .unwrap_or_else(|| field.clone());
            record.insert(key, value.clone());
        }
        Ok(())
    }

    fn table(&self, sobject: &str) -> Option<&Table> {
        self.tables
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(sobject))
    }

    /// The org's spelling of `sobject` if its schema defines it.
    fn canonical_sobject(&self, sobject: &str) -> Option<&str> {
        self.schema.object(sobject).map(|o| o.name.as_str())
    }

    /// Refuses a query naming a field, relationship or child relationship the schema does not
    /// define, or comparing a field with a literal of the wrong kind, as Salesforce does before
    /// running it.
    fn check_query(&self, query: &Query, sobject: &str) -> Result<(), CallError> {
        let object = self
            .schema
            .object(sobject)
            .ok_or_else(|| invalid_type(sobject))?;
        for item in &query.items {
            match item {
                SelectItem::Field(path) => {
                    self.field_at(object, path)?;
                }
                SelectItem::Child(sub) => {
                    let (_, child) = self.child_relationship(&object.name, &sub.from)?;
                    self.check_query(sub, &child)?;
                }
            }
        }
        if let Some(filter) = &query.filter {
            self.check_expr(object, filter)?;
        }
        for key in &query.order {
            self.field_at(object, &key.path)?;
        }
        Ok(())
    }

    fn check_expr(&self, object: &ObjectDef, expr: &Expr) -> Result<(), CallError> {
        match expr {
            Expr::And(a, b) | Expr::Or(a, b) => {
                self.check_expr(object, a)?;
                self.check_expr(object, b)
            }
            Expr::Not(inner) => self.check_expr(object, inner),
            Expr::Cmp(path, _, literal) => {
                let field = self.field_at(object, path)?;
                check_literal(field, literal)
            }
            Expr::In(path, _, literals) => {
                let field = self.field_at(object, path)?;
                literals.iter().try_for_each(|l| check_literal(field, l))
            }
            Expr::Like(path, _) => self.field_at(object, path).map(|_| ()),
        }
    }

    /// The field `path` names from `object`: a field, or a field of a parent reached through
    /// relationship names (SOQL and SOSL Reference: Relationship Queries).
    fn field_at<'a>(
        &'a self,
        object: &'a ObjectDef,
        path: &[String],
    ) -> Result<&'a FieldDef, CallError> {
        match path {
            [] => Err(CallError::rejected("MALFORMED_QUERY", "empty field path")),
            [name] => object
                .field(name)
                .ok_or_else(|| no_such_column(name, &object.name)),
            [relationship, rest @ ..] => {
                let lookup = object.relationship(relationship).ok_or_else(|| {
                    CallError::rejected(
                        "INVALID_FIELD",
                        format!(
                            "Didn't understand relationship '{relationship}' in field path. If \
                             you are attempting to use a custom relationship, be sure to append \
                             the '__r' after the custom relationship name. Please reference \
                             your WSDL or the describe call for the appropriate names."
                        ),
                    )
                })?;
                // The first of a polymorphic lookup's targets the schema has (a lookup to an
                // object it does not model has no fields to reach).
                match lookup
                    .reference_to
                    .iter()
                    .find_map(|t| self.schema.object(t))
                {
                    Some(parent) => self.field_at(parent, rest),
                    None => Err(no_such_column(
                        rest.first().map_or("", String::as_str),
                        lookup.reference_to.first().map_or("", String::as_str),
                    )),
                }
            }
        }
    }

    fn find_by_id(&self, id: &str) -> Option<(&str, &Map<String, Value>)> {
        self.tables
            .iter()
            .find_map(|t| t.by_id(id).map(|r| (t.name.as_str(), r)))
    }

    /// A fresh id with `sobject`'s key prefix, not used by any record.
    fn new_id(&mut self, sobject: &str) -> String {
        let prefix = self
            .schema
            .object(sobject)
            .map_or(DEFAULT_PREFIX, |o| o.key_prefix.as_str())
            .to_owned();
        loop {
            self.next_seq += 1;
            let id15 = format!("{prefix}8d{:010}", self.next_seq);
            let id = format!("{id15}{}", id_suffix(&id15));
            if self.find_by_id(&id).is_none() {
                return id;
            }
        }
    }

    /// Matching records of `sobject`, rendered. `parent` (the lookup field, the parent id)
    /// restricts to the children of one record.
    fn run(
        &self,
        query: &Query,
        sobject: &str,
        parent: Option<(&str, &str)>,
    ) -> Result<Vec<Value>, CallError> {
        let mut matched: Vec<&Map<String, Value>> = Vec::new();
        if let Some(table) = self.table(sobject) {
            // `WHERE Id = '<id>'` is a lookup, as in Salesforce, not a scan.
            let by_id: Option<Vec<&Map<String, Value>>> = match (&query.filter, parent) {
                (Some(Expr::Cmp(path, CmpOp::Eq, Literal::Str(id))), None)
                    if path.len() == 1 && path[0].eq_ignore_ascii_case("Id") =>
                {
                    Some(table.by_id(id).into_iter().collect())
                }
                _ => None,
            };
            let candidates: Box<dyn Iterator<Item = &Map<String, Value>>> = match by_id {
                Some(found) => Box::new(found.into_iter()),
                None => Box::new(table.records.iter()),
            };
            for record in candidates {
                if let Some((link_field, parent_id)) = parent {
                    let link = field(record, link_field);
                    if !link
                        .and_then(Value::as_str)
                        .is_some_and(|l| id_eq(l, parent_id))
                    {
                        continue;
                    }
                }
                if let Some(filter) = &query.filter
                    && !self.eval(record, filter)
                {
                    continue;
                }
                matched.push(record);
            }
        }
        if !query.order.is_empty() {
            matched.sort_by(|a, b| self.compare_records(a, b, &query.order));
        }
        if let Some(limit) = query.limit {
            matched.truncate(limit);
        }
        matched
            .into_iter()
            .map(|record| {
                self.render(sobject, record, &query.items)
                    .map(Value::Object)
            })
            .collect()
    }

    fn render(
        &self,
        sobject: &str,
        record: &Map<String, Value>,
        items: &[SelectItem],
    ) -> Result<Map<String, Value>, CallError> {
        let mut out = Map::new();
        out.insert("attributes".into(), attributes(sobject, record));
        for item in items {
            match item {
                SelectItem::Field(path) => self.render_path(&mut out, record, path),
                SelectItem::Child(sub) => {
                    let (name, child_sobject) = self.child_relationship(sobject, &sub.from)?;
                    let parent_id = record_id(record).unwrap_or_default();
                    let link = self
                        .schema
                        .children(sobject)
                        .into_iter()
                        .find(|c| c.name == name)
                        .map(|c| c.field)
                        .unwrap_or_else(|| format!("{sobject}Id"));
                    let children = self.run(sub, &child_sobject, Some((&link, parent_id)))?;
                    // Salesforce sends null, not an empty list, for a relationship without rows.
                    let value = if children.is_empty() {
                        Value::Null
                    } else {
                        json!({"totalSize": children.len(), "done": true, "records": children})
                    };
                    out.insert(name, value);
                }
            }
        }
        Ok(out)
    }

    /// Puts `path` of `record` into `out`: a plain field, or a parent's field nested under the
    /// relationship name (merged with other fields of the same parent).
    fn render_path(
        &self,
        out: &mut Map<String, Value>,
        record: &Map<String, Value>,
        path: &[String],
    ) {
        let [first, rest @ ..] = path else { return };
        if rest.is_empty() {
            let (key, value) = match record.iter().find(|(k, _)| k.eq_ignore_ascii_case(first)) {
                Some((k, v)) => (k.clone(), v.clone()),
                None => (first.clone(), Value::Null),
            };
            out.insert(key, value);
            return;
        }
        let relationship = relationship_name(record, first);
        match self.parent(record, first) {
            None => {
                out.entry(relationship).or_insert(Value::Null);
            }
            Some((parent_sobject, parent)) => {
                let slot = out.entry(relationship).or_insert_with(|| {
                    let mut nested = Map::new();
                    nested.insert("attributes".into(), attributes(parent_sobject, parent));
                    Value::Object(nested)
                });
                if let Value::Object(nested) = slot {
                    self.render_path(nested, parent, rest);
                }
            }
        }
    }

    /// The parent record reached through relationship `relationship` of `record`.
    fn parent<'a>(
        &'a self,
        record: &Map<String, Value>,
        relationship: &str,
    ) -> Option<(&'a str, &'a Map<String, Value>)> {
        if let Some(base) = strip_suffix_ignore_case(relationship, "__r") {
            let id = field(record, &format!("{base}__c"))?.as_str()?;
            return self.find_by_id(id);
        }
        let id = field(record, &format!("{relationship}Id"))?.as_str()?;
        if let Some(table) = self.table(relationship)
            && let Some(parent) = table.by_id(id)
        {
            return Some((table.name.as_str(), parent));
        }
        // Polymorphic lookups (Owner -> User or Group) name no sObject: search them all.
        self.find_by_id(id)
    }

    /// `(relationship name as Salesforce spells it, child sObject)` of a child subquery's FROM,
    /// from the schema's child relationships of `parent`.
    fn child_relationship(&self, parent: &str, from: &str) -> Result<(String, String), CallError> {
        self.schema
            .children(parent)
            .into_iter()
            .find(|c| c.name.eq_ignore_ascii_case(from))
            .map(|c| (c.name, c.child))
            .ok_or_else(|| {
                CallError::rejected(
                    "INVALID_TYPE",
                    format!(
                        "Didn't understand relationship '{from}' in FROM part of query call. \
                         If you are attempting to use a custom relationship, be sure to append \
                         the '__r' after the custom relationship name."
                    ),
                )
            })
    }

    /// The value at `path` (a field or a parent's field); `None` when absent or unreachable.
    fn resolve<'a>(&'a self, record: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
        match path {
            [] => None,
            [name] => field(record, name),
            [relationship, rest @ ..] => {
                let (_, parent) = self.parent(record, relationship)?;
                self.resolve(parent, rest)
            }
        }
    }

    fn eval(&self, record: &Map<String, Value>, expr: &Expr) -> bool {
        match expr {
            Expr::And(a, b) => self.eval(record, a) && self.eval(record, b),
            Expr::Or(a, b) => self.eval(record, a) || self.eval(record, b),
            Expr::Not(inner) => !self.eval(record, inner),
            Expr::Cmp(path, op, literal) => {
                let value = self.resolve(record, path);
                match op {
                    CmpOp::Eq => value_eq(value, literal),
                    CmpOp::Ne => !value_eq(value, literal),
                    CmpOp::Lt => value_cmp(value, literal) == Some(Ordering::Less),
                    CmpOp::Le => matches!(
                        value_cmp(value, literal),
                        Some(Ordering::Less | Ordering::Equal)
                    ),
                    CmpOp::Gt => value_cmp(value, literal) == Some(Ordering::Greater),
                    CmpOp::Ge => matches!(
                        value_cmp(value, literal),
                        Some(Ordering::Greater | Ordering::Equal)
                    ),
                }
            }
            Expr::In(path, negated, literals) => {
                let value = self.resolve(record, path);
                let found = literals.iter().any(|l| value_eq(value, l));
                found != *negated
            }
            Expr::Like(path, pattern) => self
                .resolve(record, path)
                .and_then(Value::as_str)
                .is_some_and(|text| soql::like_matches(pattern, text)),
        }
    }

    fn compare_records(
        &self,
        a: &Map<String, Value>,
        b: &Map<String, Value>,
        keys: &[OrderKey],
    ) -> Ordering {
        for key in keys {
            let va = self.resolve(a, &key.path).filter(|v| !v.is_null());
            let vb = self.resolve(b, &key.path).filter(|v| !v.is_null());
            let ordering = match (va, vb) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => {
                    if key.nulls_last {
                        Ordering::Greater
                    } else {
                        Ordering::Less
                    }
                }
                (Some(_), None) => {
                    if key.nulls_last {
                        Ordering::Less
                    } else {
                        Ordering::Greater
                    }
                }
                (Some(x), Some(y)) => {
                    let o = sort_cmp(x, y);
                    if key.desc { o.reverse() } else { o }
                }
            };
            if ordering != Ordering::Equal {
                return ordering;
            }
        }
        Ordering::Equal
    }
}

/// The HTTP status the Salesforce REST API answers a [`CallError`] with.
pub fn sf_status_for(err: &CallError) -> u16 {
    match err.kind {
        ErrorKind::Rejected => match err.code.as_str() {
            "NOT_FOUND" => 404,
            "INVALID_SESSION_ID" => 401,
            "REQUEST_LIMIT_EXCEEDED" => 403,
            _ => 400,
        },
        ErrorKind::InvalidInput | ErrorKind::Forbidden => 400,
        ErrorKind::Auth => 401,
        ErrorKind::HttpStatus => err.code.parse().unwrap_or(500),
        ErrorKind::Timeout | ErrorKind::Network | ErrorKind::BadResponse => 503,
    }
}

/// Salesforce's error body for `err`: `[{"message", "errorCode", "fields"}]`. The fields of
/// `INVALID_FIELD_FOR_INSERT_UPDATE` are the ones its message names.
pub fn sf_error_body(err: &CallError) -> Value {
    let fields: Vec<&str> = if err.code == "INVALID_FIELD_FOR_INSERT_UPDATE" {
        err.message
            .strip_prefix("Unable to create/update fields: ")
            .and_then(|rest| rest.split_once(". "))
            .map(|(names, _)| names.split(", ").collect())
            .unwrap_or_else(|| vec!["Id"])
    } else {
        Vec::new()
    };
    json!([{"message": err.message, "errorCode": err.code, "fields": fields}])
}

fn invalid_type(sobject: &str) -> CallError {
    CallError::rejected(
        "INVALID_TYPE",
        format!(
            "sObject type '{sobject}' is not supported. If you are attempting to use a custom \
             object, be sure to append the '__c' after the entity name."
        ),
    )
}

/// A query's unknown column (SOQL and SOSL Reference: the `INVALID_FIELD` answer).
fn no_such_column(field: &str, sobject: &str) -> CallError {
    CallError::rejected(
        "INVALID_FIELD",
        format!(
            "No such column '{field}' on entity '{sobject}'. If you are attempting to use a custom \
             field, be sure to append the '__c' after the custom field name. Please reference \
             your WSDL or the describe call for the appropriate names."
        ),
    )
}

/// An unknown field in a record body (REST API Developer Guide: Update a Record).
fn no_such_column_update(field: &str, sobject: &str) -> CallError {
    CallError::rejected(
        "INVALID_FIELD",
        format!("No such column '{field}' on sobject of type {sobject}"),
    )
}

/// Refuses a literal of the wrong kind for `field` (SOQL and SOSL Reference: fieldExpression
/// Syntax: number fields take unquoted numbers, text fields quoted strings).
fn check_literal(field: &FieldDef, literal: &Literal) -> Result<(), CallError> {
    let wrong = |kind: &str, quoted: &str| {
        Err(CallError::rejected(
            "INVALID_FIELD",
            format!(
                "value of filter criterion for field '{}' must be of type {kind} and {quoted}",
                field.name
            ),
        ))
    };
    match literal {
        Literal::Str(_) if field.field_type.is_numeric() => {
            wrong("double", "should not be enclosed in quotes")
        }
        Literal::Num(_) if field.field_type.is_text() => {
            wrong("string", "should be enclosed in quotes")
        }
        _ => Ok(()),
    }
}

/// Refuses a value `field` cannot take: a read-only field, a value outside a restricted
/// picklist, text over the field's length (REST API Developer Guide: Status Codes and Error
/// Responses; API Reference: StatusCode).
fn check_value(field: &FieldDef, value: &Value) -> Result<(), CallError> {
    if !field.updateable {
        return Err(CallError::rejected(
            "INVALID_FIELD_FOR_INSERT_UPDATE",
            format!(
                "Unable to create/update fields: {}. Please check the security settings of this \
                 field and verify that it is read/write for your profile or permission set.",
                field.name
            ),
        ));
    }
    let text = match value {
        Value::String(text) if !text.is_empty() => text,
        _ => return Ok(()),
    };
    if field.field_type == FieldType::Picklist
        && field.restricted
        && !field.picklist.iter().any(|v| v == text)
    {
        return Err(CallError::rejected(
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            format!(
                "{}: bad value for restricted picklist field: {text}",
                field.label
            ),
        ));
    }
    if field.length > 0 && text.chars().count() > field.length as usize {
        return Err(CallError::rejected(
            "STRING_TOO_LONG",
            format!(
                "{}: data value too large: {} (max length={})",
                field.label,
                crate::domain::clip(text, 80),
                field.length
            ),
        ));
    }
    Ok(())
}

fn attributes(sobject: &str, record: &Map<String, Value>) -> Value {
    let id = record_id(record).unwrap_or_default();
    json!({
        "type": sobject,
        "url": format!("/services/data/{API_VERSION}/sobjects/{sobject}/{id}"),
    })
}

fn record_id(record: &Map<String, Value>) -> Option<&str> {
    record.get("Id").and_then(Value::as_str)
}

/// A field by case-insensitive name (Salesforce field names are case-insensitive).
fn field<'a>(record: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    record.get(name).or_else(|| {
        record
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// The relationship name as the record's lookup field spells it (`product2` -> `Product2`).
fn relationship_name(record: &Map<String, Value>, relationship: &str) -> String {
    let (lookup, suffix) = match strip_suffix_ignore_case(relationship, "__r") {
        Some(base) => (format!("{base}__c"), "__c"),
        None => (format!("{relationship}Id"), "Id"),
    };
    record
        .keys()
        .find(|k| k.eq_ignore_ascii_case(&lookup))
        .and_then(|k| k.get(..k.len() - suffix.len()))
        .map(|base| {
            if suffix == "__c" {
                format!("{base}__r")
            } else {
                base.to_owned()
            }
        })
        .unwrap_or_else(|| relationship.to_owned())
}

fn strip_suffix_ignore_case<'a>(text: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = text.len().checked_sub(suffix.len())?;
    let (head, tail) = (text.get(..cut)?, text.get(cut..)?);
    (tail.eq_ignore_ascii_case(suffix) && !head.is_empty()).then_some(head)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn looks_like_sf_id(text: &str) -> bool {
    matches!(text.len(), 15 | 18) && valid_id(text)
}

/// Id equality: a 15-character id equals the 18-character form with the same first 15 characters.
fn id_eq(a: &str, b: &str) -> bool {
    if looks_like_sf_id(a) && looks_like_sf_id(b) && a.len() != b.len() {
        return a.get(..15) == b.get(..15);
    }
    a == b || (a.len() == 18 && a.eq_ignore_ascii_case(b))
}

/// The 3-character suffix that turns a 15-character id into the case-insensitive 18-character id.
fn id_suffix(id15: &str) -> String {
    crate::domain::record_id_checksum(id15)
}

/// SOQL `=`: text compares case-insensitively (ids by their 15-character form), `= null`
/// matches an absent field.
fn value_eq(value: Option<&Value>, literal: &Literal) -> bool {
    let value = value.filter(|v| !v.is_null());
    match (value, literal) {
        (None, Literal::Null) => true,
        (None, _) | (Some(_), Literal::Null) => false,
        (Some(Value::String(s)), Literal::Str(l)) => {
            if looks_like_sf_id(s) && looks_like_sf_id(l) {
                id_eq(s, l)
            } else {
                s.to_lowercase() == l.to_lowercase()
            }
        }
        (Some(Value::String(s)), Literal::Date(d)) => s == d,
        (Some(v), Literal::Num(n)) => as_number(v) == Some(*n),
        (Some(Value::Bool(b)), Literal::Bool(l)) => b == l,
        _ => false,
    }
}

/// Ordering of a value against a literal for `<`, `>`...; `None` when not comparable.
fn value_cmp(value: Option<&Value>, literal: &Literal) -> Option<Ordering> {
    let value = value.filter(|v| !v.is_null())?;
    match (value, literal) {
        (v, Literal::Num(n)) => as_number(v)?.partial_cmp(n),
        (Value::String(s), Literal::Str(l)) => Some(s.to_lowercase().cmp(&l.to_lowercase())),
        (Value::String(s), Literal::Date(d)) => Some(s.as_str().cmp(d.as_str())),
        _ => None,
    }
}

fn as_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Sort order of two non-null values: booleans, then numbers, then text (case-insensitive).
fn sort_cmp(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Bool(_) => 0,
            Value::Number(_) => 1,
            Value::String(_) => 2,
            _ => 3,
        }
    }
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.to_lowercase().cmp(&y.to_lowercase()),
        _ => rank(a).cmp(&rank(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    /// An org with one Account, two Products, one Order with two items and one Order without.
    fn org() -> (FakeOrg, String, String) {
        let mut org = FakeOrg::new();
        let account = org
            .insert(
                "Account",
                obj(json!({"Name": "Acme", "WHMCS_Client_ID__c": "42"})),
            )
            .unwrap();
        let p1 = org
            .insert(
                "Product2",
                obj(json!({"Name": "VPS", "WH_Product_ID__c": "7"})),
            )
            .unwrap();
        let p2 = org
            .insert(
                "Product2",
                obj(json!({"Name": "Backup", "WH_Product_ID__c": "9"})),
            )
            .unwrap();
        let order = org
            .insert(
                "Order",
                obj(json!({"OrderNumber": "00000100", "Status": "Activated", "AccountId": account, "Activation_Status__c": null})),
            )
            .unwrap();
        let other = org
            .insert(
                "Order",
                obj(json!({"OrderNumber": "00000101", "Status": "Draft", "AccountId": null})),
            )
            .unwrap();
        org.insert(
            "OrderItem",
            obj(json!({"OrderId": order, "Product2Id": p1, "Quantity": 1, "Billing_Cycle__c": "monthly"})),
        )
        .unwrap();
        org.insert(
            "OrderItem",
            obj(json!({"OrderId": order, "Product2Id": p2, "Quantity": 2, "Billing_Cycle__c": "annually"})),
        )
        .unwrap();
        (org, order, other)
    }

    #[test]
    fn assigns_plausible_ids() {
        let (org, order, _) = org();
        assert_eq!(order.len(), 18);
        assert!(order.starts_with("801"));
        assert!(
            org.records("OrderItem")
                .iter()
                .all(|r| r["Id"].as_str().unwrap().starts_with("802"))
        );
        assert!(
            org.records("Account")[0]["Id"]
                .as_str()
                .unwrap()
                .starts_with("001")
        );
        assert!(
            org.records("Product2")[0]["Id"]
                .as_str()
                .unwrap()
                .starts_with("01t")
        );
        // The 15-character form finds the record too.
        assert!(org.get("order", &order[..15]).is_some());
        assert_eq!(id_suffix("001A0000006Vm9r"), "IAC");
    }

    #[test]
    fn keeps_given_ids_and_refuses_duplicates() {
        let mut org = FakeOrg::new();
        org.schema_mut()
            .declare("Custom__c.X__c", "Number(18, 0)")
            .unwrap();
        let id = org
            .insert(
                "Custom__c",
                obj(json!({"Id": "a00000000000001AAA", "X__c": 1})),
            )
            .unwrap();
        assert_eq!(id, "a00000000000001AAA");
        let err = org
            .insert("Custom__c", obj(json!({"Id": "a00000000000001AAA"})))
            .unwrap_err();
        assert_eq!(err.code, "DUPLICATE_VALUE");
        let generated = org.insert("Custom__c", Map::new()).unwrap();
        assert!(generated.starts_with("a00"));
    }

    #[test]
    fn query_renders_fields_in_select_order_with_attributes() {
        let (org, order, _) = org();
        let out = org
            .query(&format!("SELECT Status, Id, WHMCS_Order_ID__c, activation_status__c FROM Order WHERE Id = '{order}'"))
            .unwrap();
        assert_eq!(out["totalSize"], 1);
        assert_eq!(out["done"], true);
        let record = out["records"][0].as_object().unwrap();
        let keys: Vec<&str> = record.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "attributes",
                "Status",
                "Id",
                "WHMCS_Order_ID__c",
                "Activation_Status__c"
            ]
        );
        assert_eq!(record["attributes"]["type"], "Order");
        assert_eq!(
            record["attributes"]["url"],
            format!("/services/data/v66.0/sobjects/Order/{order}")
        );
        // A defined field the record does not hold reads as null.
        assert_eq!(record["WHMCS_Order_ID__c"], Value::Null);
    }

    #[test]
    fn query_parent_paths() {
        let (org, order, other) = org();
        let out = org
            .query(&format!(
                "SELECT Id, Account.WHMCS_Client_ID__c, Account.Name FROM Order WHERE Id IN ('{order}', '{other}') ORDER BY OrderNumber"
            ))
            .unwrap();
        let records = out["records"].as_array().unwrap();
        assert_eq!(records.len(), 2);
        let account = &records[0]["Account"];
        assert_eq!(account["attributes"]["type"], "Account");
        assert_eq!(account["WHMCS_Client_ID__c"], "42");
        assert_eq!(account["Name"], "Acme");
        // An empty lookup renders the relationship as null.
        assert_eq!(records[1]["Account"], Value::Null);
    }

    #[test]
    fn query_child_subquery() {
        let (org, order, other) = org();
        let out = org
            .query(&format!(
                "SELECT Id, (SELECT Id, Quantity, Billing_Cycle__c, Product2.WH_Product_ID__c FROM OrderItems ORDER BY Quantity DESC) \
                 FROM Order WHERE Id = '{order}' OR Id = '{other}' ORDER BY OrderNumber ASC"
            ))
            .unwrap();
        let with_items = &out["records"][0]["OrderItems"];
        assert_eq!(with_items["totalSize"], 2);
        assert_eq!(with_items["done"], true);
        let items = with_items["records"].as_array().unwrap();
        assert_eq!(items[0]["Quantity"], 2);
        assert_eq!(items[0]["attributes"]["type"], "OrderItem");
        assert_eq!(items[0]["Product2"]["WH_Product_ID__c"], "9");
        assert_eq!(items[1]["Product2"]["WH_Product_ID__c"], "7");
        // No children: null, as Salesforce sends it.
        assert_eq!(out["records"][1]["OrderItems"], Value::Null);

        let filtered = org
            .query(&format!(
                "SELECT Id, (SELECT Id FROM OrderItems WHERE Billing_Cycle__c = 'MONTHLY') FROM Order WHERE Id = '{order}'"
            ))
            .unwrap();
        assert_eq!(filtered["records"][0]["OrderItems"]["totalSize"], 1);
    }

    #[test]
    fn query_where_in_limit_and_comparisons() {
        let (org, _, _) = org();
        let count = |soql: &str| org.query(soql).unwrap()["totalSize"].as_u64().unwrap();
        assert_eq!(count("SELECT Id FROM Order WHERE Status = 'activated'"), 1);
        assert_eq!(count("SELECT Id FROM Order WHERE Status != 'Activated'"), 1);
        assert_eq!(
            count("SELECT Id FROM Order WHERE Status IN ('Draft', 'Activated')"),
            2
        );
        assert_eq!(
            count("SELECT Id FROM Order WHERE Status NOT IN ('Draft')"),
            1
        );
        assert_eq!(count("SELECT Id FROM Order WHERE AccountId = null"), 1);
        assert_eq!(
            count("SELECT Id FROM Order WHERE Activation_Status__c = null"),
            2
        );
        assert_eq!(count("SELECT Id FROM Order WHERE Account.Name = 'Acme'"), 1);
        assert_eq!(count("SELECT Id FROM OrderItem WHERE Quantity > 1"), 1);
        assert_eq!(
            count("SELECT Id FROM OrderItem WHERE Quantity >= 1 AND Quantity <= 2"),
            2
        );
        assert_eq!(count("SELECT Id FROM Order LIMIT 1"), 1);
        assert_eq!(count("SELECT Id FROM Product2 WHERE Name LIKE 'v%'"), 1);
        assert_eq!(count("SELECT Id FROM Pricebook2"), 0);
        assert_eq!(
            count("SELECT Id FROM Order WHERE NOT (Status = 'Draft')"),
            1
        );
        let desc = org
            .query("SELECT OrderNumber FROM Order ORDER BY OrderNumber DESC LIMIT 1")
            .unwrap();
        assert_eq!(desc["records"][0]["OrderNumber"], "00000101");
    }

    #[test]
    fn query_errors() {
        let (org, _, _) = org();
        let err = org.query("SELECT Id FORM Order").unwrap_err();
        assert_eq!(
            (err.kind, err.code.as_str()),
            (ErrorKind::Rejected, "MALFORMED_QUERY")
        );
        assert!(err.message.contains("FORM"));
        let err = org.query("SELECT Id FROM Nope").unwrap_err();
        assert_eq!(err.code, "INVALID_TYPE");
        assert!(err.message.contains("sObject type 'Nope' is not supported"));
        let err = org
            .query("SELECT Id, (SELECT Id FROM Widgets) FROM Order")
            .unwrap_err();
        assert_eq!(err.code, "INVALID_TYPE");
        assert_eq!(sf_status_for(&err), 400);
    }

    #[test]
    fn update_writes_fields() {
        let (mut org, order, _) = org();
        org.update(
            "Order",
            &order,
            &obj(json!({"Activation_Status__c": "Activated", "WHMCS_Order_ID__c": "1042", "status": "Activated"})),
        )
        .unwrap();
        let record = org.get("Order", &order).unwrap();
        assert_eq!(record["Activation_Status__c"], "Activated");
        assert_eq!(record["WHMCS_Order_ID__c"], "1042");
        // Case-insensitive field match keeps the stored spelling.
        assert!(record.get("status").is_none());
        org.update("Order", &order, &obj(json!({"WHMCS_Order_ID__c": null})))
            .unwrap();
        assert_eq!(
            org.get("Order", &order).unwrap()["WHMCS_Order_ID__c"],
            Value::Null
        );
    }

    #[test]
    fn update_errors() {
        let (mut org, order, _) = org();
        let err = org
            .update(
                "Order",
                "801000000000000AAA",
                &obj(json!({"Status": "Draft"})),
            )
            .unwrap_err();
        assert_eq!(
            (err.kind, err.code.as_str()),
            (ErrorKind::Rejected, "NOT_FOUND")
        );
        assert!(err.message.contains("801000000000000AAA"));
        assert_eq!(sf_status_for(&err), 404);

        let err = org
            .update("Order", &order, &obj(json!({"Id": "x", "Status": "y"})))
            .unwrap_err();
        assert_eq!(err.code, "INVALID_FIELD_FOR_INSERT_UPDATE");
        // All or nothing.
        assert_eq!(org.get("Order", &order).unwrap()["Status"], "Activated");

        let err = org.update("Nope", &order, &Map::new()).unwrap_err();
        assert_eq!(err.code, "INVALID_TYPE");
        let err = org
            .update("Order", &order, &obj(json!({"Bad Field": 1})))
            .unwrap_err();
        assert_eq!(err.code, "INVALID_FIELD");
    }

    #[test]
    fn custom_relationships() {
        let mut org = FakeOrg::new();
        org.schema_mut()
            .declare("Plan__c.Product__c", "Lookup(Product2)")
            .unwrap();
        let product = org.insert("Product2", obj(json!({"Name": "VPS"}))).unwrap();
        org.insert("Plan__c", obj(json!({"Product__c": product})))
            .unwrap();
        let out = org.query("SELECT Product__r.Name FROM Plan__c").unwrap();
        assert_eq!(out["records"][0]["Product__r"]["Name"], "VPS");
        assert_eq!(
            out["records"][0]["Product__r"]["attributes"]["type"],
            "Product2"
        );
    }

    #[test]
    fn queries_naming_undefined_fields_are_refused() {
        let (org, order, _) = org();
        let column = |soql: &str| {
            let err = org.query(soql).unwrap_err();
            assert_eq!(
                (err.code.as_str(), sf_status_for(&err)),
                ("INVALID_FIELD", 400),
                "{soql}"
            );
            err.message
        };
        assert_eq!(
            column("SELECT Id, Foo__c FROM Order"),
            "No such column 'Foo__c' on entity 'Order'. If you are attempting to use a custom \
             field, be sure to append the '__c' after the custom field name. Please reference \
             your WSDL or the describe call for the appropriate names."
        );
        assert!(
            column("SELECT Id FROM Order WHERE Foo__c = 'x'")
                .contains("'Foo__c' on entity 'Order'")
        );
        assert!(column("SELECT Id FROM Order ORDER BY Foo__c").contains("'Foo__c'"));
        assert!(
            column("SELECT Account.Foo__c FROM Order").contains("'Foo__c' on entity 'Account'")
        );
        assert!(
            column("SELECT Nope.Name FROM Order").contains("Didn't understand relationship 'Nope'")
        );
        assert!(
            column(&format!(
                "SELECT Id, (SELECT Product2.Foo__c FROM OrderItems) FROM Order WHERE Id = '{order}'"
            ))
            .contains("'Foo__c' on entity 'Product2'")
        );
        // Types: a quoted value against a number field, a number against a text field.
        assert_eq!(
            column("SELECT Id FROM OrderItem WHERE Quantity = '1'"),
            "value of filter criterion for field 'Quantity' must be of type double and should \
             not be enclosed in quotes"
        );
        assert!(
            column("SELECT Id FROM Order WHERE WHMCS_Order_ID__c IN (1000)")
                .contains("type string")
        );
        // Unknown sObject.
        let err = org.query("SELECT Id FROM Widget__c").unwrap_err();
        assert_eq!(err.code, "INVALID_TYPE");
        assert!(
            err.message
                .starts_with("sObject type 'Widget__c' is not supported.")
        );
    }

    #[test]
    fn updates_honour_the_field_types() {
        let (mut org, order, _) = org();
        let refused = |org: &mut FakeOrg, fields: Value| {
            let err = org.update("Order", &order, &obj(fields)).unwrap_err();
            assert_eq!(sf_status_for(&err), 400);
            err
        };
        let err = refused(&mut org, json!({"Activation_Status__c": "Done"}));
        assert_eq!(err.code, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");
        assert_eq!(
            err.message,
            "Activation Status: bad value for restricted picklist field: Done"
        );
        let err = refused(
            &mut org,
            json!({"Activation_Error_Message__c": "x".repeat(256)}),
        );
        assert_eq!(err.code, "STRING_TOO_LONG");
        assert!(err.message.ends_with("(max length=255)"), "{}", err.message);
        let err = refused(&mut org, json!({"OrderNumber": "1"}));
        assert_eq!(err.code, "INVALID_FIELD_FOR_INSERT_UPDATE");
        assert_eq!(sf_error_body(&err)[0]["fields"], json!(["OrderNumber"]));
        let err = refused(&mut org, json!({"Service_Tier__c": "gold"}));
        assert_eq!(err.code, "INVALID_FIELD");
        assert_eq!(
            err.message,
            "No such column 'Service_Tier__c' on sobject of type Order"
        );
        // Nothing was written; the limits themselves pass, and null clears a picklist.
        org.update(
            "Order",
            &order,
            &obj(json!({"Activation_Status__c": "Failed", "Activation_Error_Message__c": "é".repeat(255)})),
        )
        .unwrap();
        org.update("Order", &order, &obj(json!({"Activation_Status__c": null})))
            .unwrap();
        // Declared fields can be written.
        org.schema_mut()
            .declare("Order.Service_Tier__c", "Text(40)")
            .unwrap();
        org.update("Order", &order, &obj(json!({"Service_Tier__c": "gold"})))
            .unwrap();
        assert_eq!(org.get("Order", &order).unwrap()["Service_Tier__c"], "gold");
    }

    #[test]
    fn inserts_need_defined_sobjects_and_fields() {
        let mut org = FakeOrg::new();
        assert_eq!(
            org.insert("Widget__c", Map::new()).unwrap_err().code,
            "INVALID_TYPE"
        );
        let err = org
            .insert("Account", obj(json!({"Name": "Acme", "Tier__c": "gold"})))
            .unwrap_err();
        assert_eq!(err.code, "INVALID_FIELD");
        let replaced = FakeOrg::with_schema(Schema::standard());
        assert!(
            replaced
                .query("SELECT WHMCS_Client_ID__c FROM Account")
                .is_err()
        );
        assert!(replaced.query("SELECT Name FROM Account").is_ok());
    }
}
