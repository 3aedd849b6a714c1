//! What a principal of the installation may do: its role (one per certificate the key server's
//! CA issues) and, for a workflow principal, the grant an admin gave it.

use serde::{Deserialize, Serialize};

/// What a principal may do (docs/DESIGN.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Production security: everything.
    Admin,
    /// Workflow management: submits, changes and cancels its own requests, inside the key
    /// scopes and path prefixes an admin granted it.
    Workflow,
    /// Reads the audit trail and the rule inventory; changes nothing.
    Auditor,
    /// A device: its mount is the PEP `mount:<device>`.
    Device,
    /// A named service: the key server (PEP `keyserver`) or an authz issuer publishing to ARDS.
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Workflow => "workflow",
            Role::Auditor => "auditor",
            Role::Device => "device",
            Role::Service => "service",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "workflow" => Role::Workflow,
            "auditor" => Role::Auditor,
            "device" => Role::Device,
            "service" => Role::Service,
            _ => return None,
        })
    }
}

/// What an admin allowed a workflow principal to authorize.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowGrant {
    /// Key scopes a request's asset selectors may name; `*` allows every scope.
    pub scopes: Vec<String>,
    /// Path prefixes (`show/seq1`) a request's path patterns must lie under; `**` allows every
    /// path.
    pub paths: Vec<String>,
}
