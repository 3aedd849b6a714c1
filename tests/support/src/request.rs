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
        let mut req = csap_policy::request::WireRequest::builder(name)
            .workflow_id(&format!("wf-{name}"))
            .person(self.user)
            .asset_path(self.assets)
            .window(self.window.0, self.window.1);
        for digest in self.apps {
            req = req.application(digest, name, "1", None);
        }
        for device in self.devices {
            req = req.device(device);
        }
        for action in self.actions {
            req = req.action(action);
        }
        req.to_json()
    }
}
