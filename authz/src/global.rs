//! Global security policies: the approve-by-default deny list (CSAP Part 1 §5.2). A request
//! that touches a blocked component is refused with every reason; adding a block revokes live
//! rules it now contradicts. Each block is also rendered as a Cedar `forbid` for the record.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{self, cedar_str, entity_ref};
use crate::request::{InputError, ParticipantKind, PolicyRequest};

/// What a global policy blocks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Block {
    Participant { participant: String },
    Organization { organization: String },
    ApplicationBuild { digest: String },
    ApplicationVersion { name: String, version: String },
    Vendor { vendor: String },
    Device { device: String },
    AssetScope { scope: String },
}

/// A stored global policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GlobalPolicy {
    pub id: String,
    #[serde(flatten)]
    pub block: Block,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub created_at: i64,
    /// The block as a Cedar `forbid` policy (informational; validated against the schema).
    pub cedar: String,
}

/// Why a request was refused: the policy, the request field it hit, and a sentence.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Reason {
    pub policy_id: String,
    pub field: String,
    pub message: String,
}

fn str_field(obj: &serde_json::Map<String, Value>, name: &str) -> Result<String, InputError> {
    match obj.get(name) {
        None => Err(InputError::new(name, "missing field")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(InputError::new(name, "must be a string")),
    }
}

fn name_field(obj: &serde_json::Map<String, Value>, name: &str) -> Result<String, InputError> {
    let s = str_field(obj, name)?;
    model::check_name(&s).map_err(|m| InputError::new(name, m))?;
    Ok(s)
}

fn text_field(obj: &serde_json::Map<String, Value>, name: &str) -> Result<String, InputError> {
    let s = str_field(obj, name)?;
    model::check_text(&s).map_err(|m| InputError::new(name, m))?;
    Ok(s)
}

impl Block {
    /// Parses the body of `POST /v1/policies`: `{"kind": ..., <kind's fields>, "note"?: ...}`.
    /// Returns the block and the optional note.
    pub fn from_json(body: &[u8]) -> Result<(Block, Option<String>), InputError> {
        let v: Value = crate::request::parse_json(body)?;
        let Value::Object(obj) = v else {
            return Err(InputError::new("body", "must be a JSON object"));
        };
        let kind = str_field(&obj, "kind")?;
        let block = match kind.as_str() {
            "participant" => Block::Participant {
                participant: name_field(&obj, "participant")?,
            },
            "organization" => Block::Organization {
                organization: name_field(&obj, "organization")?,
            },
            "application_build" => Block::ApplicationBuild {
                digest: model::normalize_digest(&str_field(&obj, "digest")?)
                    .map_err(|m| InputError::new("digest", m))?,
            },
            "application_version" => Block::ApplicationVersion {
                name: text_field(&obj, "name")?,
                version: text_field(&obj, "version")?,
            },
            "vendor" => Block::Vendor {
                vendor: text_field(&obj, "vendor")?,
            },
            "device" => Block::Device {
                device: name_field(&obj, "device")?,
            },
            "asset_scope" => Block::AssetScope {
                scope: name_field(&obj, "scope")?,
            },
            _ => {
                return Err(InputError::new(
                    "kind",
                    "must be one of participant, organization, application_build, \
                     application_version, vendor, device, asset_scope",
                ))
            }
        };
        let note = match obj.get("note") {
            None | Some(Value::Null) => None,
            Some(_) => Some(text_field(&obj, "note")?),
        };
        Ok((block, note))
    }

    /// Short description, e.g. `application version nuke 15.1`.
    pub fn describe(&self) -> String {
        match self {
            Block::Participant { participant } => format!("participant {participant}"),
            Block::Organization { organization } => format!("organization {organization}"),
            Block::ApplicationBuild { digest } => format!("application build blake3 {digest}"),
            Block::ApplicationVersion { name, version } => {
                format!("application version {name} {version}")
            }
            Block::Vendor { vendor } => format!("vendor {vendor}"),
            Block::Device { device } => format!("device {device}"),
            Block::AssetScope { scope } => format!("asset scope {scope}"),
        }
    }

    /// The block as Cedar `forbid` text.
    pub fn to_cedar(&self) -> String {
        let any = "forbid (principal, action, resource)";
        match self {
            Block::Participant { participant } => format!(
                "forbid (principal == {}, action, resource);",
                entity_ref("Participant", participant)
            ),
            Block::Organization { organization } => format!(
                "forbid (principal in {}, action, resource);",
                entity_ref("Participant", organization)
            ),
            Block::ApplicationBuild { digest } => format!(
                "{any} when {{ context.application == {} }};",
                entity_ref("Application", digest)
            ),
            Block::ApplicationVersion { name, version } => format!(
                "{any} when {{ context.application has name && context.application.name == {} && \
                 context.application has version && context.application.version == {} }};",
                cedar_str(name),
                cedar_str(version)
            ),
            Block::Vendor { vendor } => format!(
                "{any} when {{ context.application has vendor && context.application.vendor == {} }};",
                cedar_str(vendor)
            ),
            Block::Device { device } => format!(
                "{any} when {{ context.device == {} }};",
                entity_ref("Device", device)
            ),
            Block::AssetScope { scope } => {
                format!("{any} when {{ resource.scope == {} }};", cedar_str(scope))
            }
        }
    }
}

impl GlobalPolicy {
    pub fn new(id: String, block: Block, note: Option<String>, created_at: i64) -> Self {
        let cedar = block.to_cedar();
        Self {
            id,
            block,
            note,
            created_at,
            cedar,
        }
    }

    fn reason(&self, field: String, what: String) -> Reason {
        let note = self
            .note
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        Reason {
            policy_id: self.id.clone(),
            field,
            message: format!(
                "{what} is blocked by global security policy {} [{}]{note}",
                self.id,
                self.block.describe()
            ),
        }
    }

    /// Every way `req` touches this block.
    pub fn violations(&self, req: &PolicyRequest) -> Vec<Reason> {
        let mut out = Vec::new();
        match &self.block {
            Block::Participant { participant } => {
                for (i, p) in req.participants.iter().enumerate() {
                    if &p.id == participant {
                        out.push(self.reason(
                            format!("participants[{i}]"),
                            format!("participant {}", p.id),
                        ));
                    }
                }
            }
            Block::Organization { organization } => {
                for (i, p) in req.participants.iter().enumerate() {
                    let member = p.organization.as_ref() == Some(organization);
                    let is_org = p.kind == ParticipantKind::Organization && &p.id == organization;
                    if member || is_org {
                        out.push(self.reason(
                            format!("participants[{i}]"),
                            format!("participant {} (organization {organization})", p.id),
                        ));
                    }
                }
            }
            Block::ApplicationBuild { digest } => {
                for (i, a) in req.applications.iter().enumerate() {
                    if &a.digest == digest {
                        out.push(self.reason(
                            format!("applications[{i}]"),
                            format!("application {}", a.label()),
                        ));
                    }
                }
            }
            Block::ApplicationVersion { name, version } => {
                for (i, a) in req.applications.iter().enumerate() {
                    if a.name.as_ref() == Some(name) && a.version.as_ref() == Some(version) {
                        out.push(self.reason(
                            format!("applications[{i}]"),
                            format!("application {}", a.label()),
                        ));
                    }
                }
            }
            Block::Vendor { vendor } => {
                for (i, a) in req.applications.iter().enumerate() {
                    if a.vendor.as_ref() == Some(vendor) {
                        out.push(self.reason(
                            format!("applications[{i}]"),
                            format!("application {} from vendor {vendor}", a.label()),
                        ));
                    }
                }
            }
            Block::Device { device } => {
                for (i, d) in req.devices.iter().enumerate() {
                    if d == device {
                        out.push(self.reason(format!("devices[{i}]"), format!("device {d}")));
                    }
                }
            }
            Block::AssetScope { scope } => {
                for (i, a) in req.assets.iter().enumerate() {
                    if a.scope.as_ref() == Some(scope) {
                        out.push(
                            self.reason(format!("assets[{i}]"), format!("asset scope {scope}")),
                        );
                    }
                }
            }
        }
        out
    }
}

/// All reasons `req` is refused under `policies` (empty: approved).
pub fn check(req: &PolicyRequest, policies: &[GlobalPolicy]) -> Vec<Reason> {
    policies.iter().flat_map(|p| p.violations(req)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> PolicyRequest {
        PolicyRequest::from_json(
            include_bytes!("../examples/request-shot010.json").as_slice(),
            0,
        )
        .unwrap()
    }

    fn policy(body: &str) -> GlobalPolicy {
        let (block, note) = Block::from_json(body.as_bytes()).unwrap();
        GlobalPolicy::new("gp-1".into(), block, note, 0)
    }

    #[test]
    fn each_kind_blocks_the_matching_component() {
        let req = example();
        let hits = [
            (
                r#"{"kind":"participant","participant":"alice"}"#,
                "participants[0]",
            ),
            (
                r#"{"kind":"organization","organization":"acme-vfx"}"#,
                "participants[0]",
            ),
            (
                r#"{"kind":"application_build","digest":"6C3B8D2F0A1E4B5C9D7E8F901A2B3C4D5E6F708192A3B4C5D6E7F8091A2B3C4D"}"#,
                "applications[0]",
            ),
            (
                r#"{"kind":"application_version","name":"nuke","version":"15.1","note":"CVE-2026-0001"}"#,
                "applications[0]",
            ),
            (r#"{"kind":"vendor","vendor":"foundry"}"#, "applications[0]"),
            (r#"{"kind":"device","device":"ws-07"}"#, "devices[0]"),
            (r#"{"kind":"asset_scope","scope":"shot010"}"#, "assets[1]"),
        ];
        for (body, field) in hits {
            let reasons = policy(body).violations(&req);
            assert_eq!(reasons.len(), 1, "{body}");
            assert_eq!(reasons[0].field, field);
        }
        let misses = [
            r#"{"kind":"participant","participant":"bob"}"#,
            r#"{"kind":"application_version","name":"nuke","version":"15.2"}"#,
            r#"{"kind":"device","device":"ws-08"}"#,
        ];
        for body in misses {
            assert!(policy(body).violations(&req).is_empty(), "{body}");
        }
        let p = policy(
            r#"{"kind":"application_version","name":"nuke","version":"15.1","note":"CVE-2026-0001"}"#,
        );
        let msg = &p.violations(&req)[0].message;
        assert!(
            msg.contains("nuke 15.1") && msg.contains("CVE-2026-0001"),
            "{msg}"
        );
    }

    #[test]
    fn two_blocks_give_two_reasons() {
        let ps = vec![
            policy(r#"{"kind":"device","device":"ws-07"}"#),
            policy(r#"{"kind":"participant","participant":"alice"}"#),
        ];
        assert_eq!(check(&example(), &ps).len(), 2);
    }

    #[test]
    fn every_block_renders_schema_valid_cedar() {
        for body in [
            r#"{"kind":"participant","participant":"alice"}"#,
            r#"{"kind":"organization","organization":"acme"}"#,
            r#"{"kind":"application_build","digest":"00000000000000000000000000000000000000000000000000000000000000ff"}"#,
            r#"{"kind":"application_version","name":"nuke","version":"15.1"}"#,
            r#"{"kind":"vendor","vendor":"foundry"}"#,
            r#"{"kind":"device","device":"ws-07"}"#,
            r#"{"kind":"asset_scope","scope":"shot010"}"#,
        ] {
            let p = policy(body);
            model::validate_policies(&p.cedar).unwrap_or_else(|e| panic!("{}: {e}", p.cedar));
        }
    }

    #[test]
    fn malformed_bodies_name_the_field() {
        let field = |b: &str| Block::from_json(b.as_bytes()).unwrap_err().field;
        assert_eq!(field("nope"), "body");
        assert_eq!(field("[1]"), "body");
        assert_eq!(field(r#"{"participant":"a"}"#), "kind");
        assert_eq!(field(r#"{"kind":"robot"}"#), "kind");
        assert_eq!(field(r#"{"kind":"participant"}"#), "participant");
        assert_eq!(
            field(r#"{"kind":"participant","participant":7}"#),
            "participant"
        );
        assert_eq!(
            field(r#"{"kind":"application_build","digest":"xyz"}"#),
            "digest"
        );
        assert_eq!(
            field(r#"{"kind":"application_version","name":"nuke"}"#),
            "version"
        );
        assert_eq!(field(r#"{"kind":"device","device":"a b"}"#), "device");
        assert_eq!(field(r#"{"kind":"device","device":"a","note":5}"#), "note");
    }
}
