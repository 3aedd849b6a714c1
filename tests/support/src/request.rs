//! Authorization policy requests (OMC-style JSON), as workflow management submits them to authz.

/// One participant, on `devices`, may do `actions` on the assets under the path pattern
/// `assets` with the applications `apps` (BLAKE3 digests) during `window`.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The task's name; the workflow identifier is `wf-<name>`.
    pub name: &'a str,
    pub user: &'a str,
    pub apps: &'a [&'a str],
    pub devices: &'a [&'a str],
    /// A path pattern: `*` within a segment, `**` across.
    pub assets: &'a str,
    pub actions: &'a [&'a str],
    /// Window start and end, unix seconds.
    pub window: (i64, i64),
}

impl Request<'_> {
    /// The request body.
    pub fn json(&self) -> String {
        let name = self.name;
        let apps: Vec<serde_json::Value> = self
            .apps
            .iter()
            .map(|d| {
                serde_json::json!({"entityType": "Application",
                "identifier": [{"identifierScope": "blake3", "identifierValue": d}],
                "name": name, "version": "1"})
            })
            .collect();
        let devices: Vec<serde_json::Value> = self
            .devices
            .iter()
            .map(|d| {
                serde_json::json!({"entityType": "Device",
                "identifier": [{"identifierScope": "csap", "identifierValue": d}]})
            })
            .collect();
        serde_json::json!({
            "entityType": "AuthorizationPolicyRequest",
            "identifier": [{"identifierScope": "workflow", "identifierValue": format!("wf-{name}")}],
            "task": {"entityType": "Task", "identifier": [{"identifierScope": "csap", "identifierValue": name}], "name": name},
            "participants": [{"entityType": "Participant", "identifier": [{"identifierScope": "csap", "identifierValue": self.user}],
                              "structuralCharacteristics": {"structuralType": "person"}}],
            "applications": apps,
            "devices": devices,
            "assets": [{"entityType": "Asset", "identifier": [{"identifierScope": "path", "identifierValue": self.assets}]}],
            "actions": self.actions,
            "window": {"start": keyserver::wire::rfc3339(self.window.0), "end": keyserver::wire::rfc3339(self.window.1)}
        })
        .to_string()
    }
}
