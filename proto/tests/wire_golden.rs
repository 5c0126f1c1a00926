//! The wire contract of `recsys.v1`, pinned: `proto/wire.golden` lists every
//! message, field (number, name, type, cardinality, oneof), enum value, service
//! and method of the compiled descriptor set, one fact per line. Every line of the
//! golden must still hold: a removed or renumbered field, a changed type or
//! cardinality, a field moved in or out of a oneof, a removed method or a changed
//! request, response or streaming fails here, because deployed clients and nodes
//! of the previous build would misread the new one. (A rename shows as a removal:
//! binary-compatible, but it breaks JSON, reflection clients and generated code.)
//! Breaking changes belong in a new package, `recsys.v2`.
//!
//! Additions are compatible but must be recorded, so that removing them later is
//! caught too; after adding fields, messages or methods on purpose, run
//!
//! ```text
//! RECSYS_UPDATE_PROTO_GOLDEN=1 cargo test -p recsys-proto --test wire_golden
//! ```
//!
//! which rewrites the golden only when nothing in it was broken.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};

const UPDATE_VAR: &str = "RECSYS_UPDATE_PROTO_GOLDEN";

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("wire.golden")
}

/// A type name without the leading dot of a fully qualified reference.
fn type_ref(name: &str) -> &str {
    name.strip_prefix('.').unwrap_or(name)
}

/// The wire type of `field`: scalar name, message or enum name, or `map<K, V>`
/// when it is a map field (whose entry message is `map_entries`' member).
fn field_type(field: &FieldDescriptorProto, message: &DescriptorProto) -> String {
    match field.r#type() {
        Type::Message | Type::Group => {
            let name = type_ref(field.type_name());
            let entry = message.nested_type.iter().find(|nested| {
                nested.options.as_ref().is_some_and(|o| o.map_entry())
                    && name.ends_with(&format!(".{}", nested.name()))
            });
            match entry {
                Some(entry) => format!(
                    "map<{}, {}>",
                    field_type(&entry.field[0], entry),
                    field_type(&entry.field[1], entry)
                ),
                None => name.to_string(),
            }
        }
        Type::Enum => type_ref(field.type_name()).to_string(),
        scalar => scalar
            .as_str_name()
            .trim_start_matches("TYPE_")
            .to_lowercase(),
    }
}

fn message_facts(prefix: &str, message: &DescriptorProto, facts: &mut BTreeSet<String>) {
    if message.options.as_ref().is_some_and(|o| o.map_entry()) {
        return; // described by the map field that owns it
    }
    let name = format!("{prefix}.{}", message.name());
    facts.insert(format!("message {name}"));
    for field in &message.field {
        let repeated = field.label() == Label::Repeated;
        let map = field_type(field, message).starts_with("map<");
        let cardinality = if map {
            ""
        } else if repeated {
            " repeated"
        } else if field.proto3_optional() {
            " optional"
        } else {
            ""
        };
        // A proto3 `optional` is a synthetic oneof: its cardinality says it.
        let oneof = field
            .oneof_index
            .filter(|_| !field.proto3_optional())
            .map(|i| format!(" oneof {}", message.oneof_decl[i as usize].name()))
            .unwrap_or_default();
        facts.insert(format!(
            "field {name} = {}: {}{cardinality} {}{oneof}",
            field.number(),
            field.name(),
            field_type(field, message),
        ));
    }
    for nested in &message.nested_type {
        message_facts(&name, nested, facts);
    }
    for e in &message.enum_type {
        enum_facts(&name, e, facts);
    }
}

fn enum_facts(prefix: &str, e: &prost_types::EnumDescriptorProto, facts: &mut BTreeSet<String>) {
    let name = format!("{prefix}.{}", e.name());
    facts.insert(format!("enum {name}"));
    for value in &e.value {
        facts.insert(format!(
            "value {name} = {}: {}",
            value.number(),
            value.name()
        ));
    }
}

/// Every wire fact of the compiled protos, sorted.
fn current() -> BTreeSet<String> {
    let set = FileDescriptorSet::decode(recsys_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut facts = BTreeSet::new();
    for file in &set.file {
        let package = file.package();
        for message in &file.message_type {
            message_facts(package, message, &mut facts);
        }
        for e in &file.enum_type {
            enum_facts(package, e, &mut facts);
        }
        for service in &file.service {
            let name = format!("{package}.{}", service.name());
            facts.insert(format!("service {name}"));
            for method in &service.method {
                let stream = |on: bool| if on { "stream " } else { "" };
                facts.insert(format!(
                    "rpc {name}.{}({}{}) returns ({}{})",
                    method.name(),
                    stream(method.client_streaming()),
                    type_ref(method.input_type()),
                    stream(method.server_streaming()),
                    type_ref(method.output_type()),
                ));
            }
        }
    }
    facts
}

fn render(facts: &BTreeSet<String>) -> String {
    let mut text = String::from(
        "# The wire contract of the recsys protos: see proto/tests/wire_golden.rs.\n\
         # Update after compatible additions with\n\
         # RECSYS_UPDATE_PROTO_GOLDEN=1 cargo test -p recsys-proto --test wire_golden\n",
    );
    for fact in facts {
        text.push_str(fact);
        text.push('\n');
    }
    text
}

#[test]
fn the_wire_contract_only_grows() {
    let current = current();
    assert!(
        current.iter().any(|f| f.starts_with("rpc recsys.v1.")),
        "no recsys.v1 methods in the descriptor set"
    );
    let text = std::fs::read_to_string(golden_path()).unwrap_or_default();
    let golden: BTreeSet<String> = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(String::from)
        .collect();
    let broken: Vec<&String> = golden.difference(&current).collect();
    let added: Vec<&String> = current.difference(&golden).collect();
    assert!(
        broken.is_empty(),
        "wire-incompatible change to the protos: these facts of {} no longer hold:\n  {}\n\
         now:\n  {}\nkeep the field numbers and types (add new fields instead), or move to recsys.v2",
        golden_path().display(),
        broken
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
        added
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
    );
    if added.is_empty() {
        return;
    }
    if std::env::var(UPDATE_VAR).as_deref() == Ok("1") {
        std::fs::write(golden_path(), render(&current)).unwrap();
        eprintln!(
            "{} updated: {} facts added",
            golden_path().display(),
            added.len()
        );
        return;
    }
    panic!(
        "the protos grew; record the additions with\n  {UPDATE_VAR}=1 cargo test -p recsys-proto --test wire_golden\nnew:\n  {}",
        added
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}
