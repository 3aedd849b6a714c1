//! MovieLabs OMC-JSON v2.8: the entities of a policy request checked against the real schema.
//!
//! The schema ships inside the binary (`authz/omc/OMC-JSON-v2.8.schema.json`, Apache-2.0,
//! MovieLabs; `authz/omc/NOTICE`), unmodified. It is a JSON Schema draft 2019-09 document
//! whose root accepts an OMC root object, one entity or an array of entities; a request's
//! entities are each checked against its `rootEntity` definition (one entity, its
//! `entityType` choosing the entity's own definition), the same schema document with only the
//! root swapped, so every `$ref` resolves inside it and nothing is fetched.
//!
//! Which parts of a request are OMC ([`check_request`]): `task` (a `Task`), every
//! `participants[]` (a `Participant`), every `assets[]` (an `Asset`), and those `devices[]`
//! and `applications[]` that come as OMC entities (`Infrastructure`, `Service`) rather than in
//! csap's own `Device` / `Application` types, which `csap_policy::request` checks.

use std::sync::LazyLock;

use jsonschema::Validator;
use serde_json::Value;

use crate::request::InputError;

/// The schema text as MovieLabs publishes it.
pub const SCHEMA: &str = include_str!("../omc/OMC-JSON-v2.8.schema.json");

/// The `schemaVersion` csap writes (the schema also accepts 2.0, 2.1 and 2.6).
pub const SCHEMA_VERSION: &str = "https://movielabs.com/omc/json/schema/v2.8";

fn schema_with_root(root: Option<&str>) -> Validator {
    let mut schema: Value = serde_json::from_str(SCHEMA).expect("the shipped OMC schema is JSON");
    if let Some(pointer) = root {
        let obj = schema.as_object_mut().expect("the OMC schema is an object");
        obj.remove("oneOf");
        obj.insert("$ref".into(), Value::String(format!("#{pointer}")));
    }
    jsonschema::draft201909::options()
        .build(&schema)
        .expect("the shipped OMC schema compiles")
}

/// The whole schema, as published: a document (root object, entity or array of entities).
static DOCUMENT: LazyLock<Validator> = LazyLock::new(|| schema_with_root(None));
/// One OMC entity of any type.
static ENTITY: LazyLock<Validator> =
    LazyLock::new(|| schema_with_root(Some("/$defs/core/properties/rootEntity")));

/// Checks an OMC-JSON document (what MovieLabs' examples are) against the whole schema.
pub fn check_document(doc: &Value) -> Result<(), InputError> {
    first_error(&DOCUMENT, doc, "", "an OMC-JSON v2.8 document")
}

/// Checks one entity at `pointer` (a JSON pointer into the request, for the error) against the
/// schema, naming the failing field by its JSON pointer.
pub fn check_entity(entity: &Value, pointer: &str) -> Result<(), InputError> {
    if let Some(obj) = entity.as_object() {
        if !obj.contains_key("schemaVersion") {
            return Err(InputError::new(
                pointer,
                format!(
                    "is not an OMC-JSON v2.8 entity: add \"schemaVersion\": \"{SCHEMA_VERSION}\" \
                     and give it the OMC shape (a Participant's kind is its ParticipantSC entity, \
                     not structuralCharacteristics; see the request format in docs/services.md)"
                ),
            ));
        }
    }
    let what = match entity.get("entityType").and_then(Value::as_str) {
        Some(t) => format!("a valid OMC-JSON v2.8 {t}"),
        None => "a valid OMC-JSON v2.8 entity".to_string(),
    };
    first_error(&ENTITY, entity, pointer, &what)
}

/// The entities of a request body that are OMC, each checked where it stands.
pub fn check_request(body: &Value) -> Result<(), InputError> {
    if let Some(task) = body.get("task") {
        check_entity(task, "/task")?;
    }
    for (list, omc_types) in [
        ("participants", None),
        ("assets", None),
        ("devices", Some(&["Infrastructure"][..])),
        ("applications", Some(&["Service"][..])),
    ] {
        let Some(items) = body.get(list).and_then(Value::as_array) else {
            continue;
        };
        for (i, e) in items.iter().enumerate() {
            let is_omc = match omc_types {
                None => true,
                Some(types) => e
                    .get("entityType")
                    .and_then(Value::as_str)
                    .is_some_and(|t| types.contains(&t)),
            };
            if is_omc {
                check_entity(e, &format!("/{list}/{i}"))?;
            }
        }
    }
    Ok(())
}

/// The first schema error as one sentence: the failing field's JSON pointer (the instance
/// location, and for a missing property the property itself) and what is wrong there.
fn first_error(
    v: &Validator,
    instance: &Value,
    prefix: &str,
    what: &str,
) -> Result<(), InputError> {
    let Some(error) = v.iter_errors(instance).next() else {
        return Ok(());
    };
    let mut field = format!("{prefix}{}", error.instance_path().as_str());
    if let jsonschema::error::ValidationErrorKind::Required { property } = error.kind() {
        if let Some(p) = property.as_str() {
            field = format!("{field}/{}", p.replace('~', "~0").replace('/', "~1"));
        }
        return Err(InputError::new(field, format!("is required in {what}")));
    }
    if field.is_empty() {
        field = "/".into();
    }
    Err(InputError::new(
        field,
        format!("is not {what}: {}", short(&error.to_string())),
    ))
}

/// Schema messages quote the offending value; a whole entity would make the sentence
/// unreadable, so long quotes are cut.
fn short(message: &str) -> String {
    const MAX: usize = 240;
    if message.chars().count() <= MAX {
        return message.to_string();
    }
    let cut: String = message.chars().take(MAX).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests;
