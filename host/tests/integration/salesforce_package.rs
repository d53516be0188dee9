//! The Salesforce package shipped in `salesforce/`: every metadata file is well-formed, of the
//! type its suffix names, with the elements the Metadata API requires; the fake org's schema is
//! that package, and a component naming a field outside it fails in the test kit.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common;

const NS: &str = "http://soap.sforce.com/2006/04/metadata";

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn metadata_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            metadata_files(&path, out);
        } else if path.to_string_lossy().ends_with("-meta.xml") {
            out.push(path);
        }
    }
}

fn child<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> Option<roxmltree::Node<'a, 'a>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn text<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> Option<&'a str> {
    child(node, name).and_then(|c| c.text()).map(str::trim)
}

/// (suffix, root element, required child elements) per metadata type (Metadata API Developer
/// Guide: CustomObject, CustomField, Flow, PermissionSet, QuickAction, ConnectedApp).
const TYPES: &[(&str, &str, &[&str])] = &[
    (
        ".object-meta.xml",
        "CustomObject",
        &["label", "pluralLabel", "deploymentStatus"],
    ),
    (".field-meta.xml", "CustomField", &["label", "type"]),
    (
        ".flow-meta.xml",
        "Flow",
        &["apiVersion", "processType", "status", "label", "start"],
    ),
    (".permissionset-meta.xml", "PermissionSet", &["label"]),
    (".quickAction-meta.xml", "QuickAction", &["label", "type"]),
    (
        ".connectedApp-meta.xml",
        "ConnectedApp",
        &["label", "contactEmail", "oauthConfig"],
    ),
];

#[test]
fn every_metadata_file_is_well_formed_and_complete() {
    // force-app, and the connected-app template kept apart from it (orgs created since Spring
    // '26 cannot create connected apps: salesforce/README.md).
    let mut files = Vec::new();
    for dir in ["force-app", "connected-app"] {
        metadata_files(&repo().join("salesforce").join(dir), &mut files);
    }
    files.sort();
    let mut seen_types = std::collections::BTreeSet::new();
    for file in &files {
        let name = file.to_string_lossy().into_owned();
        let source = std::fs::read_to_string(file).unwrap();
        let doc = roxmltree::Document::parse(&source).unwrap_or_else(|e| panic!("{name}: {e}"));
        let root = doc.root_element();
        let (suffix, element, required) = TYPES
            .iter()
            .find(|(suffix, _, _)| name.ends_with(suffix))
            .unwrap_or_else(|| panic!("{name}: no known metadata type"));
        seen_types.insert(*suffix);
        assert_eq!(root.tag_name().name(), *element, "{name}");
        assert_eq!(root.tag_name().namespace(), Some(NS), "{name}");
        for required in *required {
            assert!(child(root, required).is_some(), "{name}: no <{required}>");
        }
        match *element {
            "CustomField" => {
                let kind = text(root, "type").unwrap();
                let needs: &[&str] = match kind {
                    "Text" | "LongTextArea" => &["length"],
                    "Number" | "Currency" | "Percent" => &["precision", "scale"],
                    "Picklist" | "MultiselectPicklist" => &["valueSet"],
                    "Lookup" | "MasterDetail" => &["referenceTo", "relationshipName"],
                    _ => &[],
                };
                for element in needs {
                    assert!(
                        child(root, element).is_some(),
                        "{name}: {kind} needs <{element}>"
                    );
                }
                // The Metadata API reads a type's elements in its WSDL order, alphabetical for
                // CustomField after `fullName`; an element out of place fails the deploy.
                let order: Vec<&str> = root
                    .children()
                    .filter(|c| c.is_element())
                    .map(|c| c.tag_name().name())
                    .filter(|n| *n != "fullName")
                    .collect();
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(order, sorted, "{name}: elements out of WSDL order");
                // In source format the name is the file's; a fullName, if present, must agree.
                let file_name = file.file_name().unwrap().to_string_lossy();
                if let Some(full) = text(root, "fullName") {
                    assert_eq!(format!("{full}.field-meta.xml"), file_name, "{name}");
                }
            }
            "CustomObject" if name.contains("__e") => {
                for element in ["eventType", "publishBehavior"] {
                    assert!(child(root, element).is_some(), "{name}: no <{element}>");
                }
                assert_eq!(text(root, "eventType"), Some("HighVolume"));
                assert_eq!(text(root, "publishBehavior"), Some("PublishAfterCommit"));
            }
            "Flow" => assert_eq!(text(root, "apiVersion"), Some("66.0"), "{name}"),
            _ => {}
        }
    }
    assert_eq!(
        seen_types.len(),
        TYPES.len(),
        "every metadata type is shipped"
    );

    let project: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("salesforce/sfdx-project.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(project["packageDirectories"][0]["path"], "force-app");
    assert_eq!(project["packageDirectories"][1]["path"], "connected-app");
    assert_eq!(project["packageDirectories"][0]["default"], true);
    assert_eq!(project["sourceApiVersion"], "66.0");
}

/// The platform event's fields are the ones of the Avro schema the sandbox serves.
#[test]
fn the_event_matches_the_avro_schema() {
    let avro: Value = serde_json::from_str(fulfilld::sandbox::order_event_schema_v1()).unwrap();
    assert_eq!(avro["name"], "OrderProvisionRequested__e");
    let custom: Vec<&str> = avro["fields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .filter(|n| n.ends_with("__c"))
        .collect();
    let dir =
        repo().join("salesforce/force-app/main/default/objects/OrderProvisionRequested__e/fields");
    let mut shipped: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".field-meta.xml")
                .to_owned()
        })
        .collect();
    shipped.sort();
    assert_eq!(shipped, custom);
}

/// Every custom field the default rules read or write is in the package (the fake org refuses
/// any other): the default scenarios pass against the package alone.
#[test]
fn the_default_scenarios_pass_with_the_shipped_package_given_explicitly() {
    let wasm = common::component("fulfillment");
    let package = repo().join("salesforce");
    let happy = common::scenarios_dir().join("happy-path.toml");
    let out = common::fulfilld(&[
        "test".as_ref(),
        "--salesforce-package".as_ref(),
        package.as_os_str(),
        wasm.as_os_str(),
        happy.as_os_str(),
    ]);
    let said = common::text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("PASS"), "{said}");
}

/// Acceptance (issue 13): the default component selects `Product2.WH_Product_ID__c`. Against an
/// org whose package lacks that field (the shipped package with the field file removed, and a
/// seed without its values), the fake org answers the component's query `INVALID_FIELD`, as a
/// real org would, and the scenario fails with it.
#[test]
fn a_component_selecting_a_field_the_package_lacks_fails_with_invalid_field() {
    let wasm = common::component("fulfillment");
    let dir = tempfile::tempdir().unwrap();
    let package = dir.path().join("salesforce");
    copy_dir(&repo().join("salesforce"), &package);
    std::fs::remove_file(
        package
            .join("force-app/main/default/objects/Product2/fields/WH_Product_ID__c.field-meta.xml"),
    )
    .unwrap();
    let suite = dir.path().join("suite");
    std::fs::create_dir_all(&suite).unwrap();
    let seed: String = std::fs::read_to_string(common::scenarios_dir().join("_seed.toml"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("WH_Product_ID__c"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(suite.join("_seed.toml"), seed).unwrap();
    std::fs::write(
        suite.join("lacks-field.toml"),
        "name = \"the org lacks WH_Product_ID__c\"\nseed = \"_seed.toml\"\n\n[[run]]\n\
         event = { OrderId__c = \"801000000000001AAA\" }\n[run.expect]\nresult = \"completed\"\n",
    )
    .unwrap();
    let run = |package: &Path| {
        common::fulfilld(&[
            "test".as_ref(),
            "--verbose".as_ref(),
            "--salesforce-package".as_ref(),
            package.as_os_str(),
            wasm.as_os_str(),
            suite.as_os_str(),
        ])
    };
    let out = run(&package);
    let said = common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("FAIL the org lacks WH_Product_ID__c"),
        "{said}"
    );
    assert!(said.contains("INVALID_FIELD"), "{said}");
    assert!(
        said.contains("No such column 'WH_Product_ID__c' on entity 'Product2'"),
        "{said}"
    );
    // The same scenario against the shipped package gets past the query (it fails later, in
    // mapping, for the seed lacks the values: not with INVALID_FIELD).
    let out = run(&repo().join("salesforce"));
    let said = common::text(&out);
    assert!(!said.contains("INVALID_FIELD"), "{said}");
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}
