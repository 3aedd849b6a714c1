//! Authorization policy requests from workflow management: the OMC-JSON-flavoured wire form,
//! its strict parsing (every error names the offending field) and the normalized form.
//!
//! Mapping to MovieLabs OMC-JSON vocabulary (see `authz/examples/request-shot010.json`):
//! - every entity is an object with `entityType` (optional; checked when present) and
//!   `identifier: [{identifierScope, identifierValue}]`;
//! - `task` is an OMC `Task`; its identifier with scope `csap` names it;
//! - `participants[]` are OMC `Participant`s: scope `csap` gives the user/service/org name,
//!   `structuralCharacteristics.structuralType` is `person` (default), `organization` or
//!   `service`; `organization` (csap extension) names the participant's organization;
//! - `applications[]` (csap extension, `entityType: "Application"`): identifier scope `blake3`
//!   gives the build's digest; `name`, `version`, `vendor` are optional;
//! - `devices[]` (csap extension, `entityType: "Device"`): identifier scope `csap`;
//! - `assets[]` are OMC `Asset`s: identifier scope `path` gives a path pattern
//!   (see [`crate::model`]) and scope `scope` a key scope; one asset may carry both;
//! - `actions` lists `read`, `write`, `create`, `delete`, `license`;
//! - `window.start`/`window.end`: RFC 3339 text or unix seconds; rules apply in `[start, end)`.
//!
//! [`RequestBuilder`] (`WireRequest::builder`) makes such a body in code.

mod builder;

pub use builder::RequestBuilder;

use serde::{Deserialize, Serialize};

use crate::model::{self, Action};

/// A client input error: what is wrong and which field (JSON path) it is in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{field}: {message}")]
pub struct InputError {
    pub field: String,
    pub message: String,
}

impl InputError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Deserializes JSON, reporting the JSON path of the first error (e.g. `participants[0].identifier`).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, InputError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // serde reports a missing field at the parent's path; name the field itself.
        let field = match missing_field_name(&message) {
            Some(name) if path == "." => name.to_string(),
            Some(name) => format!("{path}.{name}"),
            None if path == "." || path == "?" => "body".to_string(),
            None => path,
        };
        InputError::new(field, strip_position(&message))
    })?;
    Ok(value)
}

fn missing_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// OMC identifier.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Identifier {
    #[serde(rename = "identifierScope")]
    pub identifier_scope: String,
    #[serde(rename = "identifierValue")]
    pub identifier_value: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct StructuralCharacteristics {
    #[serde(rename = "structuralType")]
    pub structural_type: String,
}

/// One OMC-style entity as it appears on the wire (fields beyond these are ignored).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct WireEntity {
    #[serde(
        rename = "entityType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entity_type: Option<String>,
    pub identifier: Vec<Identifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(
        rename = "structuralCharacteristics",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub structural_characteristics: Option<StructuralCharacteristics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
}

/// A point in time: RFC 3339 text or unix seconds.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum WireTime {
    Unix(i64),
    Text(String),
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct WireWindow {
    pub start: WireTime,
    pub end: WireTime,
}

/// The request body of `POST /v1/requests` and `PUT /v1/requests/{id}`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct WireRequest {
    #[serde(
        rename = "entityType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entity_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifier: Vec<Identifier>,
    pub task: WireEntity,
    pub participants: Vec<WireEntity>,
    pub applications: Vec<WireEntity>,
    pub devices: Vec<WireEntity>,
    pub assets: Vec<WireEntity>,
    pub actions: Vec<String>,
    pub window: WireWindow,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ParticipantKind {
    Person,
    Organization,
    Service,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Participant {
    pub id: String,
    pub kind: ParticipantKind,
    pub organization: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Application {
    pub digest: String,
    pub name: Option<String>,
    pub version: Option<String>,
    pub vendor: Option<String>,
}

impl Application {
    /// Human-readable label for reasons: `nuke 15.1 (blake3 ab12…)`.
    pub fn label(&self) -> String {
        let short = &self.digest[..12.min(self.digest.len())];
        match (&self.name, &self.version) {
            (Some(n), Some(v)) => format!("{n} {v} (blake3 {short}…)"),
            (Some(n), None) => format!("{n} (blake3 {short}…)"),
            _ => format!("blake3 {short}…"),
        }
    }
}

/// An asset selector: a path pattern ([`crate::glob`], checked) and/or a key scope.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AssetSelector {
    pub path: Option<String>,
    pub scope: Option<String>,
}

/// A validated, normalized authorization policy request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PolicyRequest {
    pub external_ids: Vec<Identifier>,
    pub task: String,
    pub task_name: Option<String>,
    pub participants: Vec<Participant>,
    pub applications: Vec<Application>,
    pub devices: Vec<String>,
    pub assets: Vec<AssetSelector>,
    pub actions: Vec<Action>,
    pub not_before: i64,
    pub not_after: i64,
}

/// Most entities a single request may name per list (keeps rule fan-out bounded).
pub const MAX_LIST: usize = 256;

impl PolicyRequest {
    /// Parses and validates a request body. `now` rejects windows that already ended.
    pub fn from_json(body: &[u8], now: i64) -> Result<Self, InputError> {
        let wire: WireRequest = parse_json(body)?;
        Self::from_wire(&wire, now)
    }

    pub fn from_wire(w: &WireRequest, now: i64) -> Result<Self, InputError> {
        if let Some(t) = &w.entity_type {
            if t != "AuthorizationPolicyRequest" {
                return Err(InputError::new(
                    "entityType",
                    "must be \"AuthorizationPolicyRequest\"",
                ));
            }
        }
        check_entity_type(&w.task, "Task", "task")?;
        let task = csap_id(&w.task, "task")?;
        let task_name = opt_text(&w.task.name, "task.name")?;

        let participants = list(&w.participants, "participants", |e, f| {
            check_entity_type(e, "Participant", f)?;
            let id = csap_id(e, f)?;
            let kind = match e.structural_characteristics.as_ref() {
                None => ParticipantKind::Person,
                Some(sc) => match sc.structural_type.as_str() {
                    "person" => ParticipantKind::Person,
                    "organization" => ParticipantKind::Organization,
                    "service" => ParticipantKind::Service,
                    _ => {
                        return Err(InputError::new(
                            format!("{f}.structuralCharacteristics.structuralType"),
                            "must be \"person\", \"organization\" or \"service\"",
                        ))
                    }
                },
            };
            let organization = match &e.organization {
                None => None,
                Some(o) => {
                    model::check_name(o)
                        .map_err(|m| InputError::new(format!("{f}.organization"), m))?;
                    Some(o.clone())
                }
            };
            Ok(Participant {
                id,
                kind,
                organization,
            })
        })?;

        let applications = list(&w.applications, "applications", |e, f| {
            check_entity_type(e, "Application", f)?;
            let (i, raw) = find_identifier(e, "blake3").ok_or_else(|| {
                InputError::new(
                    format!("{f}.identifier"),
                    "needs an identifier with identifierScope \"blake3\" (the build's digest)",
                )
            })?;
            let digest = model::normalize_digest(raw)
                .map_err(|m| InputError::new(format!("{f}.identifier[{i}].identifierValue"), m))?;
            Ok(Application {
                digest,
                name: opt_text(&e.name, &format!("{f}.name"))?,
                version: opt_text(&e.version, &format!("{f}.version"))?,
                vendor: opt_text(&e.vendor, &format!("{f}.vendor"))?,
            })
        })?;

        let devices = list(&w.devices, "devices", |e, f| {
            check_entity_type(e, "Device", f)?;
            csap_id(e, f)
        })?;

        let assets = list(&w.assets, "assets", |e, f| {
            check_entity_type(e, "Asset", f)?;
            let mut sel = AssetSelector {
                path: None,
                scope: None,
            };
            for (i, id) in e.identifier.iter().enumerate() {
                let field = format!("{f}.identifier[{i}].identifierValue");
                match id.identifier_scope.as_str() {
                    "path" => {
                        let p = model::normalize_pattern(&id.identifier_value)
                            .map_err(|m| InputError::new(&field, m))?;
                        if sel.path.replace(p).is_some() {
                            return Err(InputError::new(field, "only one path per asset"));
                        }
                    }
                    "scope" => {
                        model::check_name(&id.identifier_value)
                            .map_err(|m| InputError::new(&field, m))?;
                        if sel.scope.replace(id.identifier_value.clone()).is_some() {
                            return Err(InputError::new(field, "only one scope per asset"));
                        }
                    }
                    _ => {}
                }
            }
            if sel.path.is_none() && sel.scope.is_none() {
                return Err(InputError::new(
                    format!("{f}.identifier"),
                    "needs an identifier with identifierScope \"path\" or \"scope\"",
                ));
            }
            Ok(sel)
        })?;

        if w.actions.is_empty() {
            return Err(InputError::new("actions", "must name at least one action"));
        }
        let mut actions = Vec::new();
        for (i, a) in w.actions.iter().enumerate() {
            let action = Action::parse(a).ok_or_else(|| {
                InputError::new(
                    format!("actions[{i}]"),
                    "must be one of read, write, create, delete, license",
                )
            })?;
            actions.push(action);
        }
        actions.sort();
        actions.dedup();

        let not_before = parse_time(&w.window.start, "window.start")?;
        let not_after = parse_time(&w.window.end, "window.end")?;
        if not_after <= not_before {
            return Err(InputError::new("window.end", "must be after window.start"));
        }
        if not_after <= now {
            return Err(InputError::new("window.end", "is in the past"));
        }

        Ok(Self {
            external_ids: w.identifier.clone(),
            task,
            task_name,
            participants,
            applications,
            devices,
            assets,
            actions,
            not_before,
            not_after,
        })
    }
}

fn list<T>(
    items: &[WireEntity],
    field: &str,
    mut f: impl FnMut(&WireEntity, &str) -> Result<T, InputError>,
) -> Result<Vec<T>, InputError> {
    if items.is_empty() {
        return Err(InputError::new(field, "must name at least one entry"));
    }
    if items.len() > MAX_LIST {
        return Err(InputError::new(
            field,
            format!("at most {MAX_LIST} entries per request"),
        ));
    }
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for (i, e) in items.iter().enumerate() {
        out.push(f(e, &format!("{field}[{i}]"))?);
    }
    Ok(out)
}

fn check_entity_type(e: &WireEntity, expected: &str, field: &str) -> Result<(), InputError> {
    match &e.entity_type {
        Some(t) if t != expected => Err(InputError::new(
            format!("{field}.entityType"),
            format!("must be \"{expected}\""),
        )),
        _ => Ok(()),
    }
}

fn find_identifier<'a>(e: &'a WireEntity, scope: &str) -> Option<(usize, &'a str)> {
    e.identifier
        .iter()
        .enumerate()
        .find(|(_, i)| i.identifier_scope == scope)
        .map(|(n, i)| (n, i.identifier_value.as_str()))
}

fn csap_id(e: &WireEntity, field: &str) -> Result<String, InputError> {
    let (i, v) = find_identifier(e, "csap").ok_or_else(|| {
        InputError::new(
            format!("{field}.identifier"),
            "needs an identifier with identifierScope \"csap\"",
        )
    })?;
    model::check_name(v)
        .map_err(|m| InputError::new(format!("{field}.identifier[{i}].identifierValue"), m))?;
    Ok(v.to_string())
}

fn opt_text(v: &Option<String>, field: &str) -> Result<Option<String>, InputError> {
    match v {
        None => Ok(None),
        Some(s) => {
            model::check_text(s).map_err(|m| InputError::new(field, m))?;
            Ok(Some(s.clone()))
        }
    }
}

/// Parses RFC 3339 text or unix seconds.
pub fn parse_time(t: &WireTime, field: &str) -> Result<i64, InputError> {
    match t {
        WireTime::Unix(s) => Ok(*s),
        WireTime::Text(s) => {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map(|t| t.unix_timestamp())
                .map_err(|_| {
                    InputError::new(
                        field,
                        "must be RFC 3339 (e.g. 2026-11-23T09:00:00Z) or unix seconds",
                    )
                })
        }
    }
}

/// Formats unix seconds as RFC 3339 UTC (for reasons and CLI output).
pub fn format_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/request-shot010.json");

    #[test]
    fn times_are_formatted_as_rfc3339_utc() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(1_795_424_400), "2026-11-23T09:00:00Z");
    }

    #[test]
    fn example_file_parses() {
        let r = PolicyRequest::from_json(EXAMPLE.as_bytes(), 0).unwrap();
        assert_eq!(r.task, "comp-shot010");
        assert_eq!(r.participants[0].id, "alice");
        assert_eq!(r.devices, vec!["ws-07"]);
        assert_eq!(r.actions, vec![Action::Read, Action::Write]);
        assert_eq!(r.assets[0].path.as_deref(), Some("show/seq1/shot010/**"));
        assert_eq!(r.not_after - r.not_before, 4 * 86400);
    }

    fn field_of(body: &str) -> String {
        PolicyRequest::from_json(body.as_bytes(), 0)
            .unwrap_err()
            .field
    }

    fn mutate(f: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut v: serde_json::Value = serde_json::from_str(EXAMPLE).unwrap();
        f(&mut v);
        v.to_string()
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of("{"), "body");
        assert_eq!(field_of("[]"), "body");
        assert_eq!(
            field_of(&mutate(|v| {
                v.as_object_mut().unwrap().remove("task");
            })),
            "task"
        );
        assert_eq!(
            field_of(&mutate(|v| v["participants"][0]["identifier"] = 5.into())),
            "participants[0].identifier"
        );
        assert_eq!(
            field_of(&mutate(
                |v| v["applications"][0]["identifier"][0]["identifierValue"] = "xyz".into()
            )),
            "applications[0].identifier[0].identifierValue"
        );
        assert_eq!(
            field_of(&mutate(|v| v["actions"][1] = "fly".into())),
            "actions[1]"
        );
        assert_eq!(
            field_of(&mutate(|v| v["window"]["end"] = "tomorrow".into())),
            "window.end"
        );
        assert_eq!(
            field_of(&mutate(
                |v| v["window"]["end"] = v["window"]["start"].clone()
            )),
            "window.end"
        );
        assert_eq!(
            field_of(&mutate(
                |v| v["assets"][0]["identifier"][0]["identifierValue"] = "/etc/passwd".into()
            )),
            "assets[0].identifier[0].identifierValue"
        );
        assert_eq!(
            field_of(&mutate(|v| v["devices"] = serde_json::json!([]))),
            "devices"
        );
        assert_eq!(
            field_of(&mutate(|v| v["devices"][0]["entityType"] = "Asset".into())),
            "devices[0].entityType"
        );
        assert_eq!(
            field_of(&mutate(|v| {
                v["window"].as_object_mut().unwrap().remove("start");
            })),
            "window.start"
        );
    }

    #[test]
    fn past_window_is_rejected() {
        let e = PolicyRequest::from_json(EXAMPLE.as_bytes(), 4_000_000_000).unwrap_err();
        assert_eq!(e.field, "window.end");
    }
}
