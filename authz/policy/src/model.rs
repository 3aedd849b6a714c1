//! The Cedar policy model shared by authz and every PEP: schema, actions, names, asset patterns.
//!
//! Entity types (namespace `Csap`):
//! - `Participant` — a person, organization or service (`kind`); persons may be `in` their
//!   organization. The principal of every request.
//! - `Application` — one build of a tool, identified by the lowercase hex BLAKE3 digest of its
//!   executable; `name`, `version`, `vendor` are optional descriptive attributes.
//! - `Device` — a workstation or render node, by its enrolled name.
//! - `Asset` — a file, identified by its path relative to the volume root; attributes `path` and
//!   `scope` (the key scope the file is encrypted under). The resource of every request.
//! - `Task` — the workflow task a rule was issued for (recorded as the `@task` annotation).
//!
//! The request context carries `now` (unix seconds), `device` and `application`.
//!
//! Asset path patterns (the syntax of `identifierScope: "path"` in requests) are
//! [`crate::glob`]'s: `*` within a segment, `**` across segments.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use cedar_policy::{
    Context, Entities, Entity, EntityUid, PolicySet, RestrictedExpression, Schema, ValidationMode,
    Validator,
};
use serde::{Deserialize, Serialize};

/// The Cedar schema every rule validates against.
pub const SCHEMA: &str = r#"
namespace Csap {
  entity Participant in [Participant] = { kind?: String };
  entity Application = { name?: String, version?: String, vendor?: String };
  entity Device;
  entity Asset = { path: String, scope: String };
  entity Task = { name?: String };
  type AccessContext = { now: Long, device: Device, application: Application };
  action read, write, create, delete, license appliesTo {
    principal: [Participant],
    resource: [Asset],
    context: AccessContext,
  };
}
"#;

/// What a participant may do to an asset. `license` is the key server's: issue a content key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Read,
    Write,
    Create,
    Delete,
    License,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::Read,
        Action::Write,
        Action::Create,
        Action::Delete,
        Action::License,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Create => "create",
            Action::Delete => "delete",
            Action::License => "license",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// One bit per action, for compiled matchers.
    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// The Cedar entity text, e.g. `Csap::Action::"read"`.
    pub fn cedar(self) -> String {
        format!("Csap::Action::\"{}\"", self.as_str())
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of the policy model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("Cedar parse error: {0}")]
    Parse(String),
    #[error("policy does not validate against the Csap schema: {0}")]
    Invalid(String),
}

/// The parsed schema (parsed once per process).
pub fn schema() -> &'static Schema {
    static SCHEMA_CELL: OnceLock<Schema> = OnceLock::new();
    SCHEMA_CELL.get_or_init(|| match Schema::from_cedarschema_str(SCHEMA) {
        Ok((schema, _warnings)) => schema,
        // The schema is a compile-time constant covered by tests; failing here is a build bug.
        Err(e) => panic!("built-in Cedar schema is invalid: {e}"),
    })
}

/// Parses Cedar policy text and validates it strictly against [`SCHEMA`].
pub fn validate_policies(text: &str) -> Result<PolicySet, ModelError> {
    let set: PolicySet = text
        .parse()
        .map_err(|e: cedar_policy::ParseErrors| ModelError::Parse(e.to_string()))?;
    let result = Validator::new(schema().clone()).validate(&set, ValidationMode::Strict);
    if result.validation_passed() {
        Ok(set)
    } else {
        let msgs: Vec<String> = result.validation_errors().map(|e| e.to_string()).collect();
        Err(ModelError::Invalid(msgs.join("; ")))
    }
}

/// Checks a name used as a Cedar entity id, PEP id part or URL segment:
/// 1–128 characters from `A-Z a-z 0-9 . _ - @ + :`.
pub fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 128 {
        return Err("must be 1 to 128 characters".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-@+:".contains(*c)))
    {
        return Err(format!(
            "character {c:?} is not allowed (use letters, digits and . _ - @ + :)"
        ));
    }
    Ok(())
}

/// Checks free text embedded in Cedar strings (application name/version/vendor, task name).
pub fn check_text(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 256 {
        return Err("must be 1 to 256 characters".into());
    }
    if s.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
        return Err("must not contain control characters, '\"' or '\\'".into());
    }
    Ok(())
}

/// Checks and normalizes (lowercases) a BLAKE3 digest: 64 hex characters.
pub fn normalize_digest(s: &str) -> Result<String, String> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("must be a BLAKE3 digest: 64 hex characters".into());
    }
    Ok(s.to_ascii_lowercase())
}

/// Checks an asset path pattern ([`crate::glob`]) and returns it unchanged: the rule text
/// carries it verbatim (`**` stays `**`, so the evaluator can tell it from `*`).
pub fn normalize_pattern(s: &str) -> Result<String, String> {
    crate::glob::check(s)?;
    Ok(s.to_string())
}

/// Renders a string as a Cedar string literal. Inputs are pre-checked to exclude `"`, `\` and
/// control characters; escaping them anyway keeps this function safe on its own.
pub fn cedar_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Cedar entity reference text, e.g. `Csap::Device::"ws-07"`.
pub fn entity_ref(kind: &str, id: &str) -> String {
    format!("Csap::{kind}::{}", cedar_str(id))
}

fn uid(kind: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(
        format!("Csap::{kind}")
            .parse()
            .unwrap_or_else(|_| unreachable!("static Csap type names parse")),
        cedar_policy::EntityId::new(id),
    )
}

/// Builds the Cedar request, context and entities for one access decision; the reference
/// (slow) path of the evaluator, and what the equivalence tests compare against.
pub(crate) fn cedar_request(
    req: &crate::eval::AccessRequest<'_>,
) -> Option<(cedar_policy::Request, Entities)> {
    let asset = uid("Asset", req.asset_path);
    let context = Context::from_pairs([
        ("now".to_string(), RestrictedExpression::new_long(req.now)),
        (
            "device".to_string(),
            RestrictedExpression::new_entity_uid(uid("Device", req.device)),
        ),
        (
            "application".to_string(),
            RestrictedExpression::new_entity_uid(uid("Application", req.application_digest)),
        ),
    ])
    .ok()?;
    let request = cedar_policy::Request::new(
        uid("Participant", req.participant),
        uid("Action", req.action.as_str()),
        asset.clone(),
        context,
        None,
    )
    .ok()?;
    let asset_entity = Entity::new(
        asset,
        HashMap::from([
            (
                "path".to_string(),
                RestrictedExpression::new_string(req.asset_path.to_string()),
            ),
            (
                "scope".to_string(),
                RestrictedExpression::new_string(req.asset_scope.to_string()),
            ),
        ]),
        HashSet::new(),
    )
    .ok()?;
    let entities = Entities::from_entities(
        [
            asset_entity,
            Entity::new_no_attrs(uid("Participant", req.participant), HashSet::new()),
        ],
        None,
    )
    .ok()?;
    Some((request, entities))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_parses_and_declares_the_csap_model() {
        let schema = schema();
        let actions: Vec<String> = schema.actions().map(|a| a.to_string()).collect();
        assert!(
            actions.iter().any(|a| a.contains("read")),
            "no read action in {actions:?}"
        );
        let types: Vec<String> = schema.entity_types().map(|t| t.to_string()).collect();
        assert_eq!(types.len(), 5, "{types:?}");
        for wanted in ["Participant", "Task", "Device", "Application", "Asset"] {
            assert!(
                types.iter().any(|t| t.ends_with(wanted)),
                "no {wanted} entity in {types:?}"
            );
        }
    }

    #[test]
    fn pattern_normalization_and_rejections() {
        assert_eq!(
            normalize_pattern("show/seq1/shot010/**").unwrap(),
            "show/seq1/shot010/**"
        );
        for bad in [
            "",
            "/abs/path",
            "a//b",
            "a/../b",
            "./a",
            "a\\b",
            "a\"b",
            "a\nb",
            "a/b**",
        ] {
            assert!(normalize_pattern(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_digests_and_text() {
        assert!(check_name("alice@acme.com").is_ok());
        assert!(check_name("ws-07").is_ok());
        assert!(check_name("bad name").is_err());
        assert!(check_name("bad\"name").is_err());
        assert!(check_name("").is_err());
        let d = "AB".repeat(32);
        assert_eq!(normalize_digest(&d).unwrap(), "ab".repeat(32));
        assert!(normalize_digest("abc").is_err());
        assert!(check_text("Nuke 15.1v2").is_ok());
        assert!(check_text("evil\"; permit").is_err());
        assert_eq!(cedar_str("a\"b\\c"), r#""a\"b\\c""#);
    }

    #[test]
    fn validator_rejects_policies_outside_the_schema() {
        assert!(validate_policies(
            r#"permit(principal == Csap::Participant::"a", action == Csap::Action::"read", resource) when { resource.path like "x/*" };"#
        )
        .is_ok());
        assert!(matches!(
            validate_policies(
                r#"permit(principal, action == Csap::Action::"read", resource) when { resource.colour == "red" };"#
            ),
            Err(ModelError::Invalid(_))
        ));
        assert!(matches!(
            validate_policies("permit(principal, action"),
            Err(ModelError::Parse(_))
        ));
    }
}
