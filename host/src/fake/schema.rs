//! The fake org's schema: the standard objects and fields the provisioning flow uses, plus the
//! custom objects and fields of a Salesforce package in SFDX source format, by default the one
//! shipped in `salesforce/` (embedded in the binary).
//!
//! A query or an update naming something the schema does not define is refused as a real org
//! refuses it (see [`super::org`]); the describe endpoint answers from it.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The shipped package's metadata files that define objects and fields, by path under
/// `salesforce/force-app/main/default/`. A test fails when a file there is not listed here.
pub const SHIPPED_PACKAGE: &[(&str, &str)] = &[
    (
        "objects/OrderProvisionRequested__e/OrderProvisionRequested__e.object-meta.xml",
        include_str!(
            "../../../salesforce/force-app/main/default/objects/OrderProvisionRequested__e/OrderProvisionRequested__e.object-meta.xml"
        ),
    ),
    (
        "objects/OrderProvisionRequested__e/fields/OrderId__c.field-meta.xml",
        include_str!(
            "../../../salesforce/force-app/main/default/objects/OrderProvisionRequested__e/fields/OrderId__c.field-meta.xml"
        ),
    ),
    (
        "objects/Order/fields/Activation_Status__c.field-meta.xml",
        include_str!(
            "../../../salesforce/force-app/main/default/objects/Order/fields/Activation_Status__c.field-meta.xml"
        ),
    ),
    (
        "objects/Order/fields/Activation_Error_Code__c.field-meta.xml",
        include_str!(
            "../../../salesforce/force-app/main/default/objects/Order/fields/Activation_Error_Code__c.field-meta.xml"
        ),
    ),
    (
        "objects/Order/fields/Activation_Error_Message__c.field-meta.xml",
        include_str!(
            "../../../salesforce/force-app/main/default/objects/Order/fields/Activation_Error_Message__c.field-meta.xml"
        ),
    ),
    (
        "objects/Order/fields/WHMCS_Order_ID__c.field-meta.xml",
        include_str!(
            "../../../salesforce/force-app/main/default/objects/Order/fields/WHMCS_Order_ID__c.field-meta.xml"
        ),
    ),
    (
        "objects/OrderItem/fields/Billing_Cycle__c.field-meta.xml",
        include_str!(
            "../../../salesforce/force-app/main/default/objects/OrderItem/fields/Billing_Cycle__c.field-meta.xml"
        ),
    ),
    (
        "objects/Product2/fields/WH_Product_ID__c.field-meta.xml",
        include_str!(
            "../../../salesforce/force-app/main/default/objects/Product2/fields/WH_Product_ID__c.field-meta.xml"
        ),
    ),
    (
        "objects/Account/fields/WHMCS_Client_ID__c.field-meta.xml",
        include_str!(
            "../../../salesforce/force-app/main/default/objects/Account/fields/WHMCS_Client_ID__c.field-meta.xml"
        ),
    ),
];

/// Metadata namespace of every source-format file.
const METADATA_NS: &str = "http://soap.sforce.com/2006/04/metadata";

/// A field's type, named as the describe call names it (REST API Developer Guide: sObject
/// Describe; SOAP API Developer Guide: Field Types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Id,
    Reference,
    String,
    TextArea,
    Picklist,
    MultiPicklist,
    Double,
    Currency,
    Percent,
    Int,
    Boolean,
    Date,
    DateTime,
    Email,
    Phone,
    Url,
}

impl FieldType {
    /// The describe call's `type`.
    pub fn describe_name(self) -> &'static str {
        match self {
            FieldType::Id => "id",
            FieldType::Reference => "reference",
            FieldType::String => "string",
            FieldType::TextArea => "textarea",
            FieldType::Picklist => "picklist",
            FieldType::MultiPicklist => "multipicklist",
            FieldType::Double => "double",
            FieldType::Currency => "currency",
            FieldType::Percent => "percent",
            FieldType::Int => "int",
            FieldType::Boolean => "boolean",
            FieldType::Date => "date",
            FieldType::DateTime => "datetime",
            FieldType::Email => "email",
            FieldType::Phone => "phone",
            FieldType::Url => "url",
        }
    }

    /// Number fields: SOQL compares them numerically, and a quoted literal is refused.
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            FieldType::Double | FieldType::Currency | FieldType::Percent | FieldType::Int
        )
    }

    /// Fields whose SOQL literals are quoted strings.
    pub fn is_text(self) -> bool {
        matches!(
            self,
            FieldType::Id
                | FieldType::Reference
                | FieldType::String
                | FieldType::TextArea
                | FieldType::Picklist
                | FieldType::MultiPicklist
                | FieldType::Email
                | FieldType::Phone
                | FieldType::Url
        )
    }
}

/// One field of an sObject.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDef {
    pub name: String,
    pub label: String,
    pub field_type: FieldType,
    /// Maximum length in characters of a text field (0 for other types).
    pub length: u32,
    pub precision: u32,
    pub scale: u32,
    pub updateable: bool,
    pub nillable: bool,
    /// Picklist values, in order.
    pub picklist: Vec<String>,
    /// A restricted picklist refuses values outside [`Self::picklist`].
    pub restricted: bool,
    /// For a lookup: the sObjects it points to.
    pub reference_to: Vec<String>,
    /// For a lookup: the parent relationship name (`Account` for `AccountId`, `Foo__r` for
    /// `Foo__c`).
    pub relationship_name: Option<String>,
    /// For a lookup: the child relationship name on the parent (`OrderItems` for
    /// `OrderItem.OrderId`).
    pub child_relationship: Option<String>,
}

impl FieldDef {
    fn new(name: &str, field_type: FieldType) -> FieldDef {
        FieldDef {
            name: name.to_owned(),
            label: label_for(name),
            field_type,
            length: 0,
            precision: 0,
            scale: 0,
            updateable: true,
            nillable: true,
            picklist: Vec::new(),
            restricted: false,
            reference_to: Vec::new(),
            relationship_name: None,
            child_relationship: None,
        }
    }

    fn text(name: &str, length: u32) -> FieldDef {
        FieldDef::sized(name, FieldType::String, length)
    }

    /// A field of `field_type` with a maximum length (text areas, email, phone, URL).
    fn sized(name: &str, field_type: FieldType, length: u32) -> FieldDef {
        FieldDef {
            length,
            ..FieldDef::new(name, field_type)
        }
    }

    /// A Number, Currency or Percent field with its digits.
    fn number(name: &str, field_type: FieldType, precision: u32, scale: u32) -> FieldDef {
        FieldDef {
            precision,
            scale,
            ..FieldDef::new(name, field_type)
        }
    }

    /// Salesforce's standard money field: 18 digits, 2 after the point.
    fn currency(name: &str) -> FieldDef {
        FieldDef::number(name, FieldType::Currency, 18, 2)
    }

    /// A checkbox: never null in Salesforce.
    fn checkbox(name: &str) -> FieldDef {
        FieldDef::new(name, FieldType::Boolean).required()
    }

    fn read_only(mut self) -> FieldDef {
        self.updateable = false;
        self
    }

    fn required(mut self) -> FieldDef {
        self.nillable = false;
        self
    }

    fn picklist<V: Into<String>>(
        name: &str,
        values: impl IntoIterator<Item = V>,
        restricted: bool,
    ) -> FieldDef {
        FieldDef {
            picklist: values.into_iter().map(Into::into).collect(),
            restricted,
            length: 255,
            ..FieldDef::new(name, FieldType::Picklist)
        }
    }

    fn lookup(name: &str, to: &str, child: Option<&str>) -> FieldDef {
        let relationship = name
            .strip_suffix("__c")
            .map(|base| format!("{base}__r"))
            .or_else(|| name.strip_suffix("Id").map(str::to_owned));
        FieldDef {
            length: 18,
            reference_to: vec![to.to_owned()],
            relationship_name: relationship,
            child_relationship: child.map(str::to_owned),
            ..FieldDef::new(name, FieldType::Reference)
        }
    }

    fn id() -> FieldDef {
        FieldDef {
            length: 18,
            label: "Record ID".into(),
            ..FieldDef::new("Id", FieldType::Id).read_only().required()
        }
    }

    /// This field in the describe call's shape.
    pub fn describe(&self) -> Value {
        let picklist: Vec<Value> = self
            .picklist
            .iter()
            .map(|v| json!({"value": v, "label": v, "active": true, "defaultValue": false}))
            .collect();
        json!({
            "name": self.name,
            "label": self.label,
            "type": self.field_type.describe_name(),
            "length": self.length,
            "precision": self.precision,
            "scale": self.scale,
            "updateable": self.updateable,
            "createable": self.updateable,
            "nillable": self.nillable,
            "custom": self.name.ends_with("__c"),
            "restrictedPicklist": self.restricted,
            "picklistValues": picklist,
            "referenceTo": self.reference_to,
            "relationshipName": self.relationship_name,
        })
    }
}

/// "Billing_Cycle__c" -> "Billing Cycle".
fn label_for(name: &str) -> String {
    name.trim_end_matches("__c")
        .trim_end_matches("__e")
        .replace('_', " ")
}

/// One sObject.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectDef {
    pub name: String,
    pub label: String,
    pub plural_label: String,
    /// The 3-character prefix of its record ids.
    pub key_prefix: String,
    pub fields: Vec<FieldDef>,
}

impl ObjectDef {
    fn new(name: &str, key_prefix: &str, fields: Vec<FieldDef>) -> ObjectDef {
        let label = label_for(name);
        ObjectDef {
            name: name.to_owned(),
            plural_label: format!("{label}s"),
            label,
            key_prefix: key_prefix.to_owned(),
            fields,
        }
    }

    /// A custom object or platform event without fields of its own yet: the standard fields
    /// every one has.
    fn custom(name: &str) -> ObjectDef {
        let fields = if name.ends_with("__e") {
            vec![
                FieldDef::new("ReplayId", FieldType::String).read_only(),
                FieldDef::new("EventUuid", FieldType::String).read_only(),
                FieldDef::new("CreatedDate", FieldType::DateTime).read_only(),
                FieldDef::lookup("CreatedById", "User", None).read_only(),
            ]
        } else {
            vec![
                FieldDef::id(),
                FieldDef::text("Name", 80),
                FieldDef::new("CreatedDate", FieldType::DateTime).read_only(),
                FieldDef::new("LastModifiedDate", FieldType::DateTime).read_only(),
            ]
        };
        ObjectDef::new(
            name,
            if name.ends_with("__e") { "e00" } else { "a00" },
            fields,
        )
    }

    /// The field named `name` (case-insensitive, as Salesforce's names are).
    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// The lookup field whose parent relationship is `relationship`.
    pub fn relationship(&self, relationship: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| {
            f.relationship_name
                .as_deref()
                .is_some_and(|r| r.eq_ignore_ascii_case(relationship))
        })
    }

    /// Adds `field`, replacing a field of the same name.
    fn put(&mut self, field: FieldDef) {
        match self
            .fields
            .iter_mut()
            .find(|f| f.name.eq_ignore_ascii_case(&field.name))
        {
            Some(slot) => *slot = field,
            None => self.fields.push(field),
        }
    }
}

/// A child relationship of an sObject: `(child sObject, its lookup field, relationship name)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildRelationship {
    pub child: String,
    pub field: String,
    pub name: String,
}

/// Why a package or a field declaration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("cannot read {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Declaration(String),
}

/// The objects and fields of an org.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    objects: Vec<ObjectDef>,
}

impl Default for Schema {
    fn default() -> Self {
        Schema::shipped()
    }
}

impl Schema {
    /// The standard objects only, without any package.
    pub fn standard() -> Schema {
        Schema {
            objects: standard_objects(),
        }
    }

    /// The standard objects plus the package shipped in `salesforce/`.
    pub fn shipped() -> Schema {
        let mut schema = Schema::standard();
        for (path, text) in SHIPPED_PACKAGE {
            // The files are embedded and checked by a test; a bad one is a build defect, so it is
            // logged and skipped rather than failing every fake org.
            if let Err(error) = schema.add_source_file(path, text) {
                tracing::error!(%error, "shipped Salesforce package file not loaded");
            }
        }
        schema
    }

    /// The standard objects plus the packages in `dirs` (SFDX project or package directories):
    /// what `fulfilld sandbox --salesforce-package` loads instead of the shipped package.
    pub fn from_packages(dirs: &[PathBuf]) -> Result<Schema, SchemaError> {
        let mut schema = Schema::standard();
        for dir in dirs {
            schema.add_package_dir(dir)?;
        }
        Ok(schema)
    }

    /// Adds every `objects/<Object>/<Object>.object-meta.xml` and
    /// `objects/<Object>/fields/<Field>.field-meta.xml` found under `dir`.
    pub fn add_package_dir(&mut self, dir: &Path) -> Result<(), SchemaError> {
        let mut files = Vec::new();
        collect_metadata(dir, &mut files)?;
        if files.is_empty() {
            return Err(SchemaError::File {
                path: dir.display().to_string(),
                message: "no objects/*/*.object-meta.xml or objects/*/fields/*.field-meta.xml \
                          under it"
                    .into(),
            });
        }
        files.sort();
        // Objects before their fields, so a field file finds its object's label.
        files.sort_by_key(|p| !p.to_string_lossy().ends_with(".object-meta.xml"));
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| SchemaError::Io {
                path: file.display().to_string(),
                source,
            })?;
            let relative = file
                .strip_prefix(dir)
                .unwrap_or(&file)
                .to_string_lossy()
                .replace('\\', "/");
            self.add_source_file(&relative, &text)
                .map_err(|e| match e {
                    SchemaError::File { message, .. } => SchemaError::File {
                        path: file.display().to_string(),
                        message,
                    },
                    other => other,
                })?;
        }
        Ok(())
    }

    /// Adds one source-format file: `.../objects/<Object>/<Object>.object-meta.xml` or
    /// `.../objects/<Object>/fields/<Field>.field-meta.xml`.
    pub fn add_source_file(&mut self, path: &str, text: &str) -> Result<(), SchemaError> {
        let err = |message: String| SchemaError::File {
            path: path.to_owned(),
            message,
        };
        let parts: Vec<&str> = path.split('/').collect();
        let doc = roxmltree::Document::parse(text).map_err(|e| err(e.to_string()))?;
        let root = doc.root_element();
        if root.tag_name().namespace() != Some(METADATA_NS) {
            return Err(err(format!("the root element is not in {METADATA_NS}")));
        }
        if let Some(file) = path.strip_suffix(".field-meta.xml") {
            let [.., object, "fields", _] = parts.as_slice() else {
                return Err(err(
                    "a field file must be at objects/<Object>/fields/".into()
                ));
            };
            let name = file.rsplit('/').next().unwrap_or(file);
            if root.tag_name().name() != "CustomField" {
                return Err(err("the root element is not CustomField".into()));
            }
            let field = parse_field(name, root).map_err(err)?;
            self.object_or_custom(object)
                .ok_or_else(|| err(format!("unknown standard object {object}")))?
                .put(field);
            Ok(())
        } else if path.ends_with(".object-meta.xml") {
            let [.., object, _] = parts.as_slice() else {
                return Err(err("an object file must be at objects/<Object>/".into()));
            };
            if root.tag_name().name() != "CustomObject" {
                return Err(err("the root element is not CustomObject".into()));
            }
            let Some(def) = self.object_or_custom(object) else {
                // A standard object's settings file: nothing the fake uses.
                return Ok(());
            };
            if let Some(label) = child_text(root, "label") {
                def.label = label.to_owned();
            }
            if let Some(plural) = child_text(root, "pluralLabel") {
                def.plural_label = plural.to_owned();
            }
            Ok(())
        } else {
            Err(err("not an object or field file".into()))
        }
    }

    /// Adds field `name` (`Object.Field`) declared as `spec`: `Text(40)`, `TextArea`,
    /// `LongTextArea(32768)`, `Number(18,0)`, `Currency(16,2)`, `Percent(3,0)`, `Checkbox`,
    /// `Date`, `DateTime`, `Email`, `Phone`, `Url`, `Picklist(A|B)` (restricted),
    /// `OpenPicklist(A|B)` (unrestricted), `Lookup(Account)`. An unknown custom object
    /// (`Plan__c`) is created.
    pub fn declare(&mut self, name: &str, spec: &str) -> Result<(), SchemaError> {
        let bad =
            |why: &str| SchemaError::Declaration(format!("schema \"{name}\" = \"{spec}\": {why}"));
        let Some((object, field)) = name.split_once('.') else {
            return Err(bad("the name must be Object.Field"));
        };
        if field.is_empty()
            || !field
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(bad("not a field name"));
        }
        let spec = spec.trim();
        let (kind, args) = match spec.split_once('(') {
            Some((kind, rest)) => (
                kind.trim(),
                Some(
                    rest.strip_suffix(')')
                        .ok_or_else(|| bad("missing `)`"))?
                        .trim(),
                ),
            ),
            None => (spec, None),
        };
        let numbers = |args: Option<&str>| -> Result<Vec<u32>, SchemaError> {
            args.unwrap_or_default()
                .split(',')
                .filter(|a| !a.trim().is_empty())
                .map(|a| a.trim().parse().map_err(|_| bad("not a number")))
                .collect()
        };
        let values = |args: Option<&str>| -> Vec<String> {
            args.unwrap_or_default()
                .split('|')
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect()
        };
        let def = match kind.to_ascii_lowercase().as_str() {
            "picklist" | "openpicklist" => {
                FieldDef::picklist(field, values(args), kind.eq_ignore_ascii_case("picklist"))
            }
            "lookup" => {
                let to = args
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| bad("Lookup(<sObject>)"))?;
                FieldDef::lookup(field, to, None)
            }
            _ => {
                let n = numbers(args)?;
                let digits = (
                    n.first().copied().unwrap_or(18),
                    n.get(1).copied().unwrap_or(0),
                );
                sized_field(field, kind, n.first().copied(), digits)
                    .ok_or_else(|| bad("unknown type"))?
            }
        };
        let object_def = self
            .object_or_custom(object)
            .ok_or_else(|| bad("unknown standard object (custom ones end in __c)"))?;
        object_def.put(def);
        Ok(())
    }

    /// The sObject named `name` (case-insensitive).
    pub fn object(&self, name: &str) -> Option<&ObjectDef> {
        self.objects
            .iter()
            .find(|o| o.name.eq_ignore_ascii_case(name))
    }

    /// The sObjects, in definition order.
    pub fn objects(&self) -> &[ObjectDef] {
        &self.objects
    }

    /// The object `name`, created when it is a custom object or platform event.
    fn object_or_custom(&mut self, name: &str) -> Option<&mut ObjectDef> {
        let position = match self
            .objects
            .iter()
            .position(|o| o.name.eq_ignore_ascii_case(name))
        {
            Some(position) => position,
            None if name.ends_with("__c") || name.ends_with("__e") => {
                self.objects.push(ObjectDef::custom(name));
                self.objects.len() - 1
            }
            None => return None,
        };
        self.objects.get_mut(position)
    }

    /// The child relationships of `sobject`: the lookups of other objects to it that have a
    /// child relationship name.
    pub fn children(&self, sobject: &str) -> Vec<ChildRelationship> {
        self.objects
            .iter()
            .flat_map(|o| {
                o.fields.iter().filter_map(move |f| {
                    let name = f.child_relationship.as_ref()?;
                    f.reference_to
                        .iter()
                        .any(|t| t.eq_ignore_ascii_case(sobject))
                        .then(|| ChildRelationship {
                            child: o.name.clone(),
                            field: f.name.clone(),
                            name: name.clone(),
                        })
                })
            })
            .collect()
    }

    /// `sobject` in the describe call's shape (REST API Developer Guide: sObject Describe), or
    /// `None` when the org has no such sObject.
    pub fn describe(&self, sobject: &str) -> Option<Value> {
        let object = self.object(sobject)?;
        let event = object.name.ends_with("__e");
        let children: Vec<Value> = self
            .children(&object.name)
            .into_iter()
            .map(|c| json!({"childSObject": c.child, "field": c.field, "relationshipName": c.name}))
            .collect();
        Some(json!({
            "name": object.name,
            "label": object.label,
            "labelPlural": object.plural_label,
            "keyPrefix": object.key_prefix,
            "custom": object.name.ends_with("__c") || event,
            "queryable": !event,
            "updateable": !event,
            "createable": true,
            "fields": object.fields.iter().map(FieldDef::describe).collect::<Vec<_>>(),
            "childRelationships": children,
        }))
    }
}

/// Collects the object and field files under `dir` (any depth: an SFDX project, a package
/// directory or `main/default`).
fn collect_metadata(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), SchemaError> {
    let entries = std::fs::read_dir(dir).map_err(|source| SchemaError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| SchemaError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(|source| SchemaError::Io {
            path: path.display().to_string(),
            source,
        })?;
        if file_type.is_dir() {
            let name = entry.file_name();
            if name == "node_modules" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            collect_metadata(&path, out)?;
        } else if file_type.is_file() {
            let name = path.to_string_lossy().replace('\\', "/");
            let in_objects = name.contains("/objects/");
            if in_objects
                && (name.ends_with(".field-meta.xml") || name.ends_with(".object-meta.xml"))
            {
                out.push(path);
            }
        }
    }
    Ok(())
}

fn child_text<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> Option<&'a str> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
        .and_then(|c| c.text())
        .map(str::trim)
}

/// A field of Metadata API type `kind` (any case) whose shape is its type and, where the type
/// has them, a `length` (Text, LongTextArea; default 255 and 32768) and `digits` (precision
/// and scale of a Number, Currency or Percent). `None` for types with more to them (picklists,
/// lookups) or unknown to the fake org. Package XML and scenario declarations both build
/// their fields here.
fn sized_field(
    name: &str,
    kind: &str,
    length: Option<u32>,
    digits: (u32, u32),
) -> Option<FieldDef> {
    let number = |field_type| FieldDef::number(name, field_type, digits.0, digits.1);
    let sized = |length, field_type| FieldDef::sized(name, field_type, length);
    Some(match kind.to_ascii_lowercase().as_str() {
        "text" | "encryptedtext" => FieldDef::text(name, length.unwrap_or(255)),
        "textarea" => sized(255, FieldType::TextArea),
        "longtextarea" | "html" => sized(length.unwrap_or(32768), FieldType::TextArea),
        "number" => number(FieldType::Double),
        "currency" => number(FieldType::Currency),
        "percent" => number(FieldType::Percent),
        "checkbox" => FieldDef::checkbox(name),
        "date" => FieldDef::new(name, FieldType::Date),
        "datetime" => FieldDef::new(name, FieldType::DateTime),
        "email" => sized(80, FieldType::Email),
        "phone" => sized(40, FieldType::Phone),
        "url" => sized(255, FieldType::Url),
        _ => return None,
    })
}

/// A `CustomField` element (Metadata API Developer Guide: CustomField).
fn parse_field(name: &str, root: roxmltree::Node) -> Result<FieldDef, String> {
    let kind = child_text(root, "type").ok_or("no <type>")?;
    let number = |element: &str| -> Result<Option<u32>, String> {
        child_text(root, element)
            .map(|t| {
                t.parse()
                    .map_err(|_| format!("<{element}> {t:?} is not a number"))
            })
            .transpose()
    };
    let mut field = match kind {
        "Picklist" | "MultiselectPicklist" => {
            let value_set = root
                .children()
                .find(|c| c.is_element() && c.tag_name().name() == "valueSet")
                .ok_or("Picklist needs <valueSet>")?;
            let restricted = child_text(value_set, "restricted") == Some("true");
            let values: Vec<String> = value_set
                .descendants()
                .filter(|n| n.is_element() && n.tag_name().name() == "value")
                .filter_map(|v| child_text(v, "fullName").map(str::to_owned))
                .collect();
            let mut field = FieldDef::picklist(name, values, restricted);
            if kind == "MultiselectPicklist" {
                field.field_type = FieldType::MultiPicklist;
            }
            field
        }
        "Lookup" | "MasterDetail" => {
            let to = child_text(root, "referenceTo").ok_or("Lookup needs <referenceTo>")?;
            // `<relationshipName>` names the child relationship without its suffix; SOQL names
            // a custom one with `__r` (`(SELECT Id FROM Plans__r)`), as describe reports it.
            let child = child_text(root, "relationshipName").map(|child| {
                if name.ends_with("__c") {
                    format!("{child}__r")
                } else {
                    child.to_owned()
                }
            });
            FieldDef::lookup(name, to, child.as_deref())
        }
        "AutoNumber" => FieldDef::text(name, 30).read_only(),
        "Summary" => FieldDef::new(name, FieldType::Double).read_only(),
        _ => {
            // What the Metadata API requires of each sized type.
            let length = match kind {
                "Text" | "EncryptedText" | "LongTextArea" | "Html" => {
                    Some(number("length")?.ok_or(format!("{kind} needs <length>"))?)
                }
                _ => None,
            };
            let digits = match kind {
                "Number" | "Currency" | "Percent" => (
                    number("precision")?.ok_or("needs <precision>")?,
                    number("scale")?.ok_or("needs <scale>")?,
                ),
                _ => (18, 0),
            };
            sized_field(name, kind, length, digits).ok_or(format!(
                "field type {kind} is not supported by the fake org"
            ))?
        }
    };
    if let Some(label) = child_text(root, "label") {
        field.label = label.to_owned();
    }
    if child_text(root, "formula").is_some() {
        field.updateable = false;
    }
    if child_text(root, "required") == Some("true") {
        field.nillable = false;
    }
    Ok(field)
}

/// The standard objects and fields the provisioning flow, the seeds and the tests use
/// (Object Reference for the Salesforce Platform: Order, OrderItem, Account, Product2,
/// Pricebook2, PricebookEntry).
fn standard_objects() -> Vec<ObjectDef> {
    use FieldType as T;
    let audit = || {
        vec![
            FieldDef::new("CreatedDate", T::DateTime)
                .read_only()
                .required(),
            FieldDef::new("LastModifiedDate", T::DateTime)
                .read_only()
                .required(),
            FieldDef::lookup("CreatedById", "User", None).read_only(),
            FieldDef::lookup("LastModifiedById", "User", None).read_only(),
            FieldDef::new("SystemModstamp", T::DateTime)
                .read_only()
                .required(),
            FieldDef::new("IsDeleted", T::Boolean)
                .read_only()
                .required(),
        ]
    };
    let with_audit = |mut fields: Vec<FieldDef>| {
        fields.extend(audit());
        fields
    };
    let mut order = ObjectDef::new(
        "Order",
        "801",
        with_audit(vec![
            FieldDef::id(),
            FieldDef::text("OrderNumber", 30).read_only().required(),
            FieldDef::text("Name", 80),
            FieldDef::picklist("Status", ["Draft", "Activated"], true).required(),
            FieldDef::new("StatusCode", T::Picklist).read_only(),
            FieldDef::lookup("AccountId", "Account", Some("Orders")),
            FieldDef::lookup("Pricebook2Id", "Pricebook2", Some("Orders")),
            FieldDef::lookup("OwnerId", "User", None),
            FieldDef::new("EffectiveDate", T::Date).required(),
            FieldDef::new("EndDate", T::Date),
            FieldDef::new("ActivatedDate", T::DateTime),
            FieldDef::picklist("Type", Vec::<String>::new(), false),
            FieldDef::text("PoNumber", 80),
            FieldDef::text("OrderReferenceNumber", 80),
            FieldDef::sized("Description", T::TextArea, 32000),
            FieldDef::currency("TotalAmount").read_only(),
        ]),
    );
    order.label = "Order".into();
    let order_item = ObjectDef::new(
        "OrderItem",
        "802",
        with_audit(vec![
            FieldDef::id(),
            FieldDef::text("OrderItemNumber", 30).read_only(),
            FieldDef::lookup("OrderId", "Order", Some("OrderItems")).read_only(),
            FieldDef::lookup("Product2Id", "Product2", None).read_only(),
            FieldDef::lookup("PricebookEntryId", "PricebookEntry", Some("OrderItems")).read_only(),
            FieldDef::number("Quantity", T::Double, 18, 2).required(),
            FieldDef::currency("UnitPrice"),
            FieldDef::currency("ListPrice").read_only(),
            FieldDef::currency("TotalPrice").read_only(),
            FieldDef::new("ServiceDate", T::Date),
            FieldDef::new("EndDate", T::Date),
            FieldDef::text("Description", 255),
        ]),
    );
    let account = ObjectDef::new(
        "Account",
        "001",
        with_audit(vec![
            FieldDef::id(),
            FieldDef::text("Name", 255).required(),
            FieldDef::text("AccountNumber", 40),
            FieldDef::picklist("Type", Vec::<String>::new(), false),
            FieldDef::lookup("OwnerId", "User", None),
            FieldDef::lookup("ParentId", "Account", Some("ChildAccounts")),
            FieldDef::sized("Phone", T::Phone, 40),
            FieldDef::sized("Website", T::Url, 255),
            FieldDef::text("BillingCity", 40),
            FieldDef::text("BillingCountry", 80),
            FieldDef::sized("Description", T::TextArea, 32000),
        ]),
    );
    let product = ObjectDef::new(
        "Product2",
        "01t",
        with_audit(vec![
            FieldDef::id(),
            FieldDef::text("Name", 255).required(),
            FieldDef::text("ProductCode", 255),
            FieldDef::sized("Description", T::TextArea, 4000),
            FieldDef::checkbox("IsActive"),
            FieldDef::picklist("Family", Vec::<String>::new(), false),
        ]),
    );
    let pricebook = ObjectDef::new(
        "Pricebook2",
        "01s",
        with_audit(vec![
            FieldDef::id(),
            FieldDef::text("Name", 255).required(),
            FieldDef::checkbox("IsActive"),
            FieldDef::new("IsStandard", T::Boolean)
                .read_only()
                .required(),
            FieldDef::text("Description", 255),
        ]),
    );
    let entry = ObjectDef::new(
        "PricebookEntry",
        "01u",
        with_audit(vec![
            FieldDef::id(),
            FieldDef::text("Name", 255).read_only(),
            FieldDef::lookup("Pricebook2Id", "Pricebook2", Some("PricebookEntries")).read_only(),
            FieldDef::lookup("Product2Id", "Product2", Some("PricebookEntries")).read_only(),
            FieldDef::text("ProductCode", 255).read_only(),
            FieldDef::currency("UnitPrice").required(),
            FieldDef::checkbox("IsActive"),
            FieldDef::checkbox("UseStandardPrice"),
        ]),
    );
    let mut entry = entry;
    entry.label = "Price Book Entry".into();
    entry.plural_label = "Price Book Entries".into();
    // The users records point at (owner, created by): a lookup's parent must exist for paths
    // such as `Owner.Name` or `CreatedBy.Name`, as they do in every org.
    let user = ObjectDef::new(
        "User",
        "005",
        with_audit(vec![
            FieldDef::id(),
            FieldDef::text("Name", 121).read_only(),
            FieldDef::text("FirstName", 40),
            FieldDef::text("LastName", 80).required(),
            FieldDef::text("Username", 80).required(),
            FieldDef::sized("Email", T::Email, 128),
            FieldDef::checkbox("IsActive"),
        ]),
    );
    vec![order, order_item, account, product, pricebook, entry, user]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every object or field file of the package is embedded (and so loaded by the fake org).
    #[test]
    fn every_package_file_is_embedded() {
        let root =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../salesforce/force-app/main/default");
        let mut files = Vec::new();
        collect_metadata(&root, &mut files).unwrap();
        let mut on_disk: Vec<String> = files
            .iter()
            .map(|f| {
                f.strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/")
            })
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = SHIPPED_PACKAGE
            .iter()
            .map(|(p, _)| (*p).to_owned())
            .collect();
        embedded.sort();
        assert_eq!(on_disk, embedded, "add the new file to SHIPPED_PACKAGE");
        let mut schema = Schema::standard();
        for (path, text) in SHIPPED_PACKAGE {
            schema.add_source_file(path, text).unwrap();
        }
        assert_eq!(schema, Schema::shipped());
    }

    /// `--salesforce-package salesforce` (the project directory) loads what is embedded; a
    /// directory without metadata is refused.
    #[test]
    fn packages_from_directories() {
        let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("../salesforce");
        // The same objects and fields; the order of fields follows the file order.
        let sorted = |mut schema: Schema| {
            for object in &mut schema.objects {
                object.fields.sort_by(|a, b| a.name.cmp(&b.name));
            }
            schema
        };
        assert_eq!(
            sorted(Schema::from_packages(&[project]).unwrap()),
            sorted(Schema::shipped())
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(Schema::from_packages(&[empty.path().to_owned()]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let fields = dir
            .path()
            .join("force-app/main/default/objects/Order/fields");
        std::fs::create_dir_all(&fields).unwrap();
        std::fs::write(
            fields.join("Tier__c.field-meta.xml"),
            r#"<?xml version="1.0" encoding="UTF-8"?>
<CustomField xmlns="http://soap.sforce.com/2006/04/metadata">
    <label>Tier</label><type>Number</type><precision>3</precision><scale>0</scale>
</CustomField>"#,
        )
        .unwrap();
        let schema = Schema::from_packages(&[dir.path().to_owned()]).unwrap();
        let order = schema.object("Order").unwrap();
        assert_eq!(
            order.field("Tier__c").unwrap().field_type,
            FieldType::Double
        );
        assert!(
            order.field("Activation_Status__c").is_none(),
            "replaces the shipped package"
        );
        std::fs::write(fields.join("Bad__c.field-meta.xml"), "<CustomField>").unwrap();
        let err = Schema::from_packages(&[dir.path().to_owned()]).unwrap_err();
        assert!(err.to_string().contains("Bad__c.field-meta.xml"), "{err}");
    }

    #[test]
    fn shipped_package_fields() {
        let schema = Schema::shipped();
        let order = schema.object("order").unwrap();
        let status = order.field("Activation_Status__c").unwrap();
        assert_eq!(status.field_type, FieldType::Picklist);
        assert!(status.restricted);
        assert_eq!(status.picklist, ["Activating", "Activated", "Failed"]);
        assert_eq!(
            order.field("Activation_Error_Message__c").unwrap().length,
            255
        );
        assert_eq!(
            order.field("WHMCS_Order_ID__c").unwrap().field_type,
            FieldType::String
        );
        let cycle = schema
            .object("OrderItem")
            .unwrap()
            .field("Billing_Cycle__c")
            .unwrap();
        assert!(!cycle.restricted);
        assert!(cycle.picklist.iter().any(|v| v == "Monthly"));
        let event = schema.object("OrderProvisionRequested__e").unwrap();
        assert_eq!(event.label, "Order Provision Requested");
        assert_eq!(event.field("OrderId__c").unwrap().length, 18);
        assert!(
            schema
                .object("Account")
                .unwrap()
                .field("WHMCS_Client_ID__c")
                .is_some()
        );
        assert!(
            schema
                .object("Product2")
                .unwrap()
                .field("WH_Product_ID__c")
                .is_some()
        );
    }

    #[test]
    fn declarations() {
        let mut schema = Schema::shipped();
        schema.declare("Order.Service_Tier__c", "Text(40)").unwrap();
        schema
            .declare("Order.Tier__c", "Picklist(Gold|Silver)")
            .unwrap();
        schema
            .declare("Plan__c.Product__c", "Lookup(Product2)")
            .unwrap();
        schema
            .declare("Plan__c.Price__c", "Currency(16, 2)")
            .unwrap();
        let order = schema.object("Order").unwrap();
        assert_eq!(order.field("Service_Tier__c").unwrap().length, 40);
        assert!(order.field("Tier__c").unwrap().restricted);
        let plan = schema.object("Plan__c").unwrap();
        assert_eq!(
            plan.relationship("Product__r").unwrap().reference_to,
            ["Product2"]
        );
        assert_eq!(
            plan.field("Price__c").unwrap().field_type,
            FieldType::Currency
        );
        for (name, spec) in [
            ("Order", "Text(4)"),
            ("Widget.X__c", "Text(4)"),
            ("Order.X__c", "Blob"),
            ("Order.X__c", "Text(x)"),
        ] {
            assert!(schema.declare(name, spec).is_err(), "{name} = {spec}");
        }
    }

    #[test]
    fn describe_shape() {
        let schema = Schema::shipped();
        let order = schema.describe("order").unwrap();
        assert_eq!(order["name"], "Order");
        assert_eq!(order["queryable"], true);
        let fields = order["fields"].as_array().unwrap();
        let status = fields
            .iter()
            .find(|f| f["name"] == "Activation_Status__c")
            .unwrap();
        assert_eq!(status["type"], "picklist");
        assert_eq!(status["picklistValues"][0]["value"], "Activating");
        let account = fields.iter().find(|f| f["name"] == "AccountId").unwrap();
        assert_eq!(account["type"], "reference");
        assert_eq!(account["referenceTo"][0], "Account");
        assert_eq!(account["relationshipName"], "Account");
        let number = fields.iter().find(|f| f["name"] == "OrderNumber").unwrap();
        assert_eq!(number["updateable"], false);
        assert!(
            order["childRelationships"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["relationshipName"] == "OrderItems" && c["childSObject"] == "OrderItem")
        );
        assert!(schema.describe("Nope").is_none());
    }
}
