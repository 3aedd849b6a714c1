//! Authorization policy requests built in code: the OMC-JSON body workflow management submits,
//! made from the wire types themselves ([`WireRequest`] is what `POST /v1/requests` parses), for
//! the quickstart, the tests and the benchmarks instead of JSON written by hand.

use super::{
    format_time, Identifier, WireEntity, WireRequest, WireTime, WireWindow, CSAP_DOMAIN,
    ORGANIZATION_NAMESPACE,
};

/// A [`WireRequest`] under construction; [`RequestBuilder::build`] returns it. Nothing is
/// checked here: authz checks the request it is sent ([`super::PolicyRequest::from_wire`]), so
/// a test can also build the requests it expects refused.
#[derive(Debug, Clone)]
pub struct RequestBuilder(WireRequest);

impl WireRequest {
    /// A request for the task `task` (its `csap` id, also its name until
    /// [`RequestBuilder::task_name`]), with no entries and an empty window yet.
    pub fn builder(task: &str) -> RequestBuilder {
        RequestBuilder(WireRequest {
            entity_type: Some("AuthorizationPolicyRequest".into()),
            identifier: Vec::new(),
            task: WireEntity {
                name: Some(task.into()),
                ..omc("Task", "csap", task)
            },
            participants: Vec::new(),
            applications: Vec::new(),
            devices: Vec::new(),
            assets: Vec::new(),
            actions: Vec::new(),
            window: WireWindow {
                start: WireTime::Unix(0),
                end: WireTime::Unix(0),
            },
        })
    }

    /// The body as sent (JSON).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a WireRequest has string keys only")
    }
}

impl RequestBuilder {
    /// The workflow management system's own id of the request.
    pub fn workflow_id(mut self, id: &str) -> Self {
        self.0.identifier.push(identifier("workflow", id));
        self
    }

    /// The task's display name.
    pub fn task_name(mut self, name: &str) -> Self {
        self.0.task.name = Some(name.into());
        self
    }

    /// A participant who is a person, by user name.
    pub fn person(mut self, user: &str) -> Self {
        self.0
            .participants
            .push(participant("Person", "person", user));
        self
    }

    /// A participant who is a person of organization `org`.
    pub fn person_of(mut self, user: &str, org: &str) -> Self {
        let mut p = participant("Person", "person", user);
        p.custom_data = Some(serde_json::json!([{
            "domain": CSAP_DOMAIN,
            "namespace": ORGANIZATION_NAMESPACE,
            "value": org,
        }]));
        self.0.participants.push(p);
        self
    }

    /// A participant that is an organization (`csap org add NAME`).
    pub fn organization(mut self, org: &str) -> Self {
        self.0
            .participants
            .push(participant("Organization", "organization", org));
        self
    }

    /// An application build by its BLAKE3 digest, with its name, version and vendor.
    pub fn application(
        self,
        digest: &str,
        name: &str,
        version: &str,
        vendor: Option<&str>,
    ) -> Self {
        self.push_application(digest, Some(name), Some(version), vendor)
    }

    /// An application build by its BLAKE3 digest alone, or with its name.
    pub fn application_build(self, digest: &str, name: Option<&str>) -> Self {
        self.push_application(digest, name, None, None)
    }

    fn push_application(
        mut self,
        digest: &str,
        name: Option<&str>,
        version: Option<&str>,
        vendor: Option<&str>,
    ) -> Self {
        self.0.applications.push(WireEntity {
            name: name.map(Into::into),
            version: version.map(|v| serde_json::Value::String(v.into())),
            vendor: vendor.map(Into::into),
            ..entity("Application", "blake3", digest)
        });
        self
    }

    /// A device by name.
    pub fn device(mut self, device: &str) -> Self {
        self.0.devices.push(entity("Device", "csap", device));
        self
    }

    /// The assets whose paths match `pattern` (the [`crate::glob`] dialect).
    pub fn asset_path(mut self, pattern: &str) -> Self {
        self.0.assets.push(omc("Asset", "path", pattern));
        self
    }

    /// The assets of key scope `scope`.
    pub fn asset_scope(mut self, scope: &str) -> Self {
        self.0.assets.push(omc("Asset", "scope", scope));
        self
    }

    /// An asset by an asset manager's identifier (resolved through authz's asset-identifier
    /// map, `csap asset map add`).
    pub fn asset_id(mut self, scope: &str, value: &str) -> Self {
        self.0.assets.push(omc("Asset", scope, value));
        self
    }

    /// One action by its wire name (`read`, `write`, `create`, `delete`, `license`).
    pub fn action(mut self, action: &str) -> Self {
        self.0.actions.push(action.into());
        self
    }

    /// The window [`start`, `end`), unix seconds, sent as RFC 3339.
    pub fn window(mut self, start: i64, end: i64) -> Self {
        self.0.window = WireWindow {
            start: WireTime::Text(format_time(start)),
            end: WireTime::Text(format_time(end)),
        };
        self
    }

    pub fn build(self) -> WireRequest {
        self.0
    }

    /// [`RequestBuilder::build`], as the JSON body.
    pub fn to_json(&self) -> String {
        self.0.to_json()
    }
}

fn identifier(scope: &str, value: &str) -> Identifier {
    Identifier {
        identifier_scope: scope.into(),
        identifier_value: value.into(),
    }
}

/// csap's own entity types (`Application`, `Device`): no OMC schema version.
fn entity(entity_type: &str, scope: &str, value: &str) -> WireEntity {
    WireEntity {
        schema_version: None,
        entity_type: Some(entity_type.into()),
        identifier: vec![identifier(scope, value)],
        name: None,
        version: None,
        vendor: None,
        participant_sc: None,
        structural_type: None,
        custom_data: None,
        software: None,
    }
}

/// An OMC-JSON v2.8 entity.
fn omc(entity_type: &str, scope: &str, value: &str) -> WireEntity {
    WireEntity {
        schema_version: Some(OMC_SCHEMA_VERSION.into()),
        ..entity(entity_type, scope, value)
    }
}

/// An OMC Participant whose ParticipantSC is a `kind` (`Person`, …) named `name` in csap.
fn participant(kind: &str, structural_type: &str, name: &str) -> WireEntity {
    WireEntity {
        participant_sc: Some(Box::new(WireEntity {
            structural_type: Some(structural_type.into()),
            ..omc(kind, "csap", name)
        })),
        ..omc("Participant", "csap", name)
    }
}

/// The `schemaVersion` of the OMC entities csap writes.
pub const OMC_SCHEMA_VERSION: &str = "https://movielabs.com/omc/json/schema/v2.8";

#[cfg(test)]
mod tests {
    use super::super::PolicyRequest;
    use super::*;

    /// The example request of the docs, built: authz reads both the same, and the JSON of the
    /// built one parses back to it.
    #[test]
    fn a_built_request_is_the_example_file() {
        let example = include_bytes!("../../../examples/request-shot010.json");
        let built = WireRequest::builder("comp-shot010")
            .workflow_id("wf-2026-0042")
            .task_name("Comp shot 010")
            .person_of("alice", "acme-vfx")
            .application(
                "6c3b8d2f0a1e4b5c9d7e8f901a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d",
                "nuke",
                "15.1",
                Some("foundry"),
            )
            .device("ws-07")
            .asset_path("show/seq1/shot010/**")
            .asset_scope("shot010")
            .action("read")
            .action("write")
            .window(1_795_424_400, 1_795_770_000)
            .build();
        let wire: WireRequest = serde_json::from_slice(example).unwrap();
        assert_eq!(built, wire);
        assert_eq!(
            PolicyRequest::from_json(built.to_json().as_bytes(), 0).unwrap(),
            PolicyRequest::from_json(example, 0).unwrap()
        );
    }

    #[test]
    fn a_request_missing_a_list_is_refused_by_authz_naming_it() {
        let body = WireRequest::builder("t")
            .person("alice")
            .device("ws-1")
            .asset_path("show/**")
            .action("read")
            .window(100, 200)
            .to_json();
        let err = PolicyRequest::from_json(body.as_bytes(), 0).unwrap_err();
        assert_eq!(err.field, "applications");
    }
}
