//! Authorization policy requests from workflow management: the OMC-JSON-flavoured wire form,
//! its strict parsing (every error names the offending field) and the normalized form.
//!
//! The request is csap's envelope around MovieLabs OMC-JSON v2.8 entities (see
//! `authz/examples/request-shot010.json` and the table in docs/services.md); authz checks
//! the OMC ones against the schema (`authz::omc`) before this parser reads them:
//! - `task` is an OMC `Task`; its identifier with scope `csap` names it;
//! - `participants[]` are OMC `Participant`s; the `entityType` of their `ParticipantSC`
//!   (`Person`, `Organization`, `Service`) is the kind; the identifier with scope `csap` (on
//!   the Participant, else on its ParticipantSC) gives the user/organization/service name; a
//!   Person's organization is csap's `customData` entry `{"domain": "csap", "namespace":
//!   "organization", "value": NAME}`;
//! - `applications[]`: csap's `Application` (`name`, `version`, `vendor`) or an OMC
//!   `Service` (`software[0].softwareName` / `softwareVersion`); identifier scope `blake3`
//!   gives the build's digest;
//! - `devices[]`: csap's `Device` or an OMC `Infrastructure`; identifier scope `csap`;
//! - `assets[]` are OMC `Asset`s: identifier scope `path` gives a path pattern
//!   (see [`crate::model`]) and scope `scope` a key scope; one asset may carry both; an asset
//!   with neither is named by an asset manager's identifiers (scope `labkoat`, …), resolved
//!   to a path through the asset-identifier map ([`AssetIds`]);
//! - `actions` lists `read`, `write`, `create`, `delete`, `license`;
//! - `window.start`/`window.end`: RFC 3339 text or unix seconds; rules apply in `[start, end)`.
//!
//! [`RequestBuilder`] (`WireRequest::builder`) makes such a body in code.

mod builder;

pub use builder::{RequestBuilder, OMC_SCHEMA_VERSION};

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

/// One entity as it appears on the wire: an OMC-JSON v2.8 entity (`Task`, `Participant` and
/// its `ParticipantSC` — `Person`, `Organization` or `Service` —, `Asset`, `Infrastructure`,
/// `Service`) or one of csap's own (`Application`, `Device`). Only the fields csap reads are
/// here; the rest of an OMC entity is kept in the stored body and checked by the schema
/// (`authz::omc`), not here.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct WireEntity {
    #[serde(
        rename = "schemaVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub schema_version: Option<String>,
    #[serde(
        rename = "entityType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entity_type: Option<String>,
    pub identifier: Vec<Identifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// csap `Application`: the build's version (text). OMC `Asset`: its version object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<serde_json::Value>,
    /// csap `Application`: the vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// OMC `Participant`: the Person, Organization or Service it is.
    #[serde(
        rename = "ParticipantSC",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub participant_sc: Option<Box<WireEntity>>,
    /// OMC `Person` / `Organization` / `Service`: `person`, `organization`, `service`.
    #[serde(
        rename = "structuralType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub structural_type: Option<String>,
    /// OMC `customData`: csap reads `{"domain": "csap", "namespace": "organization",
    /// "value": NAME}` on a Person participant (its organization).
    #[serde(
        rename = "customData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub custom_data: Option<serde_json::Value>,
    /// OMC `Service`: `[{softwareName, softwareVersion}]` (an application build).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub software: Option<serde_json::Value>,
}

/// The `customData` domain and namespace of a Person participant's organization.
pub const CSAP_DOMAIN: &str = "csap";
pub const ORGANIZATION_NAMESPACE: &str = "organization";

/// Asset identifiers of an asset manager resolved to csap path patterns: (identifierScope,
/// identifierValue) → path, what `authz` looked up in its asset-identifier map.
pub type AssetIds = std::collections::BTreeMap<(String, String), String>;

/// Identifier scopes csap itself names assets by.
const CSAP_ASSET_SCOPES: [&str; 2] = ["path", "scope"];

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

impl WireRequest {
    /// The identifiers of assets named by neither a csap path nor a key scope: the ones to
    /// look up in the asset-identifier map before [`PolicyRequest::from_wire_with`].
    pub fn foreign_asset_identifiers(&self) -> Vec<Identifier> {
        self.assets
            .iter()
            .filter(|a| {
                !a.identifier
                    .iter()
                    .any(|i| CSAP_ASSET_SCOPES.contains(&i.identifier_scope.as_str()))
            })
            .flat_map(|a| a.identifier.iter().cloned())
            .collect()
    }
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
    /// Parses and validates a request body. `now` rejects windows that already ended. Assets
    /// named only by an asset manager's identifiers are refused (nothing resolves them here:
    /// see [`PolicyRequest::from_wire_with`]).
    pub fn from_json(body: &[u8], now: i64) -> Result<Self, InputError> {
        let wire: WireRequest = parse_json(body)?;
        Self::from_wire(&wire, now)
    }

    pub fn from_wire(w: &WireRequest, now: i64) -> Result<Self, InputError> {
        Self::from_wire_with(w, now, &AssetIds::new())
    }

    /// [`PolicyRequest::from_wire`], an asset named only by foreign identifiers taking the
    /// path `asset_ids` maps them to; an asset none of whose identifiers is mapped is refused,
    /// naming them.
    pub fn from_wire_with(
        w: &WireRequest,
        now: i64,
        asset_ids: &AssetIds,
    ) -> Result<Self, InputError> {
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
            let sc = e.participant_sc.as_deref();
            let kind = match sc.and_then(|sc| sc.entity_type.as_deref()) {
                Some("Person") => ParticipantKind::Person,
                Some("Organization") => ParticipantKind::Organization,
                Some("Service") => ParticipantKind::Service,
                _ => {
                    return Err(InputError::new(
                        format!("{f}.ParticipantSC"),
                        "must be a Person, Organization or Service entity (its entityType is \
                         the participant's kind)",
                    ))
                }
            };
            // The Participant's csap identifier names it, else its Person/Organization/Service's.
            let id = match (find_identifier(e, "csap"), sc) {
                (None, Some(sc)) if find_identifier(sc, "csap").is_some() => {
                    csap_id(sc, &format!("{f}.ParticipantSC"))?
                }
                _ => csap_id(e, f)?,
            };
            let organization = member_of(e, f)?;
            if organization.is_some() && kind != ParticipantKind::Person {
                return Err(InputError::new(
                    format!("{f}.customData"),
                    "only a Person participant names its organization",
                ));
            }
            Ok(Participant {
                id,
                kind,
                organization,
            })
        })?;

        let applications = list(&w.applications, "applications", |e, f| {
            let omc = e.entity_type.as_deref() == Some("Service");
            if !omc {
                check_entity_type(e, "Application", f)?;
            }
            let (i, raw) = find_identifier(e, "blake3").ok_or_else(|| {
                InputError::new(
                    format!("{f}.identifier"),
                    "needs an identifier with identifierScope \"blake3\" (the build's digest)",
                )
            })?;
            let digest = model::normalize_digest(raw)
                .map_err(|m| InputError::new(format!("{f}.identifier[{i}].identifierValue"), m))?;
            let (name, version, vendor) = if omc {
                let sw = e.software.as_ref().and_then(|s| s.get(0));
                let text = |key: &str| sw.and_then(|s| s.get(key)).and_then(|v| v.as_str());
                let name = text("softwareName")
                    .map(Into::into)
                    .or_else(|| e.name.clone());
                (
                    opt_text(&name, &format!("{f}.software[0].softwareName"))?,
                    opt_text(
                        &text("softwareVersion").map(Into::into),
                        &format!("{f}.software[0].softwareVersion"),
                    )?,
                    None,
                )
            } else {
                let version = match &e.version {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(v)) => Some(v.clone()),
                    Some(_) => return Err(InputError::new(format!("{f}.version"), "must be text")),
                };
                (
                    opt_text(&e.name, &format!("{f}.name"))?,
                    opt_text(&version, &format!("{f}.version"))?,
                    opt_text(&e.vendor, &format!("{f}.vendor"))?,
                )
            };
            Ok(Application {
                digest,
                name,
                version,
                vendor,
            })
        })?;

        let devices = list(&w.devices, "devices", |e, f| {
            if e.entity_type.as_deref() != Some("Infrastructure") {
                check_entity_type(e, "Device", f)?;
            }
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
                sel.path = Some(resolve_foreign(e, f, asset_ids)?);
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

/// The path an asset named only by an asset manager's identifiers maps to: every mapped
/// identifier must agree; none mapped refuses the request, naming them.
fn resolve_foreign(e: &WireEntity, f: &str, asset_ids: &AssetIds) -> Result<String, InputError> {
    let field = format!("{f}.identifier");
    if e.identifier.is_empty() {
        return Err(InputError::new(
            field,
            "needs an identifier with identifierScope \"path\" or \"scope\", or one in the asset-identifier map",
        ));
    }
    let mut found: Option<String> = None;
    for id in &e.identifier {
        let key = (id.identifier_scope.clone(), id.identifier_value.clone());
        if let Some(path) = asset_ids.get(&key) {
            match &found {
                Some(p) if p != path => {
                    return Err(InputError::new(
                        field,
                        format!("its identifiers map to different paths ({p:?} and {path:?})"),
                    ))
                }
                _ => found = Some(path.clone()),
            }
        }
    }
    let named = e
        .identifier
        .iter()
        .map(|i| format!("{} {:?}", i.identifier_scope, i.identifier_value))
        .collect::<Vec<_>>()
        .join(", ");
    let path = found.ok_or_else(|| {
        InputError::new(
            &field,
            format!(
                "names an asset csap does not know: {named} is not in the asset-identifier map \
                 (add it with `csap asset map add --scope SCOPE --value VALUE --path PATH`)"
            ),
        )
    })?;
    model::normalize_pattern(&path).map_err(|m| InputError::new(field, m))
}

/// A Person participant's organization: csap's `customData` entry
/// `{"domain": "csap", "namespace": "organization", "value": NAME}` (OMC 2.8 has no
/// membership field on a Person or Participant).
fn member_of(e: &WireEntity, f: &str) -> Result<Option<String>, InputError> {
    let Some(serde_json::Value::Array(items)) = &e.custom_data else {
        return Ok(None);
    };
    let mut org = None;
    for (i, item) in items.iter().enumerate() {
        let is_ours = item.get("domain").and_then(|d| d.as_str()) == Some(CSAP_DOMAIN)
            && item.get("namespace").and_then(|n| n.as_str()) == Some(ORGANIZATION_NAMESPACE);
        if !is_ours {
            continue;
        }
        let field = format!("{f}.customData[{i}].value");
        let name = item
            .get("value")
            .and_then(|v| v.as_str())
            .ok_or_else(|| InputError::new(&field, "must be the organization's name"))?;
        model::check_name(name).map_err(|m| InputError::new(&field, m))?;
        if org.replace(name.to_string()).is_some() {
            return Err(InputError::new(
                field,
                "only one organization per participant",
            ));
        }
    }
    Ok(org)
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
