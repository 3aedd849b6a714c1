//! JSON wire types of the key server API, shared by the server handlers and the client library.
//! Actions are the policy model's; roles and workflow grants are `csap-identity`'s.

use serde::{Deserialize, Serialize};

pub use csap_identity::Role as PrincipalKind;
pub use csap_policy::Action;

/// Why a request or one asset of a batch was refused. Sent to clients; carries no other data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    TokenInvalid,
    TokenExpired,
    UnknownUser,
    UserDisabled,
    BadPassword,
    UnknownApplication,
    ApplicationRevoked,
    UnknownDevice,
    DeviceRevoked,
    NoRule,
    KeyRevoked,
    UnknownAsset,
    UnknownScope,
    RateLimited,
    NotAdmin,
    /// The license session named is unknown, ended, or another device's: open a new one.
    SessionUnknown,
    /// The token was issued on another device (its `device` claim is not the presenting
    /// connection's certificate): 401.
    TokenWrongDevice,
    /// The token is from before tokens named their device and uid: 401, log in again.
    TokenOutdated,
    /// An OpenID Connect login named an organization with no identity provider on record.
    UnknownOrganization,
    /// The ID token's `exp` has passed (or its `iat` is in the future).
    IdTokenExpired,
    /// The ID token is for another client (`aud`/`azp` is not the provider's client id).
    IdTokenWrongAudience,
    /// The ID token's `iss` is not the organization's provider.
    IdTokenWrongIssuer,
    /// The ID token's signature does not verify under the provider's published keys.
    IdTokenBadSignature,
    /// The ID token is malformed, answers another login (`nonce`) or names an unusable subject.
    IdTokenInvalid,
    /// The organization's provider could not be reached or sent no usable keys: nothing is
    /// granted without checking (503).
    ProviderUnavailable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TokenInvalid => "token_invalid",
            Reason::TokenExpired => "token_expired",
            Reason::UnknownUser => "unknown_user",
            Reason::UserDisabled => "user_disabled",
            Reason::BadPassword => "bad_password",
            Reason::UnknownApplication => "unknown_application",
            Reason::ApplicationRevoked => "application_revoked",
            Reason::UnknownDevice => "unknown_device",
            Reason::DeviceRevoked => "device_revoked",
            Reason::NoRule => "no_rule",
            Reason::KeyRevoked => "key_revoked",
            Reason::UnknownAsset => "unknown_asset",
            Reason::UnknownScope => "unknown_scope",
            Reason::RateLimited => "rate_limited",
            Reason::NotAdmin => "not_admin",
            Reason::SessionUnknown => "session_unknown",
            Reason::TokenWrongDevice => "token_wrong_device",
            Reason::TokenOutdated => "token_outdated",
            Reason::UnknownOrganization => "unknown_organization",
            Reason::IdTokenExpired => "id_token_expired",
            Reason::IdTokenWrongAudience => "id_token_wrong_audience",
            Reason::IdTokenWrongIssuer => "id_token_wrong_issuer",
            Reason::IdTokenBadSignature => "id_token_bad_signature",
            Reason::IdTokenInvalid => "id_token_invalid",
            Reason::ProviderUnavailable => "provider_unavailable",
        }
    }

    /// What the user is to do about a refusal, for reasons where that is not obvious.
    pub fn advice(self) -> Option<&'static str> {
        match self {
            Reason::TokenWrongDevice => Some(
                "the token was issued on another device and is useless here: run `csap login` on this device",
            ),
            Reason::TokenOutdated => Some(
                "the token names no device and uid (issued before tokens were bound to them): run `csap login` again",
            ),
            Reason::UnknownOrganization => Some(
                "no identity provider is on record for that organization: an admin adds it with `csap idp add`",
            ),
            Reason::IdTokenExpired => Some("the ID token has expired: run `csap login --oidc` again"),
            Reason::IdTokenWrongAudience => Some(
                "the ID token was issued to another client than the one on record for the organization",
            ),
            Reason::IdTokenWrongIssuer => Some(
                "the ID token was not issued by the identity provider on record for the organization",
            ),
            Reason::IdTokenBadSignature => Some(
                "the ID token's signature does not verify under the provider's published keys",
            ),
            Reason::IdTokenInvalid => Some(
                "the ID token is malformed, answers another login (nonce) or names an unusable subject",
            ),
            Reason::ProviderUnavailable => Some(
                "the organization's identity provider cannot be reached: try again later",
            ),
            _ => None,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every error response body: `{"error": "...", "field"?: "...", "reason"?: "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

/// A password or token on the wire: zeroized on drop, redacted in Debug.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

// ---------- users ----------

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub user: String,
    pub password: Secret,
    /// The local uid on the device the token is for. The device vouches for it: the login
    /// arrives over the device's mTLS identity, which only its mount (root) holds, and the
    /// mount fills it in from the kernel (SO_PEERCRED) for logins relayed from its socket.
    pub uid: u32,
}

/// `POST /v1/login/oidc`: an ID token from an organization's own provider (delegated
/// authentication), for a csap token bound as a password login's is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcLoginRequest {
    pub organization: String,
    pub id_token: Secret,
    /// The nonce the client put in its authorization request: the ID token must carry it.
    pub nonce: String,
    /// As [`LoginRequest::uid`].
    pub uid: u32,
}

/// An organization's OpenID Connect provider as the key server trusts it
/// (`GET/PUT /v1/identity-providers/{organization}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityProvider {
    pub organization: String,
    /// The provider's issuer URL (its discovery document is `ISSUER/.well-known/openid-configuration`).
    pub issuer: String,
    /// The client id csap is registered under at the provider: the ID tokens' audience.
    pub client_id: String,
    /// Participants are named by a stable pseudonym of their subject, never the subject itself.
    #[serde(default)]
    pub pseudonymous: bool,
    #[serde(default)]
    pub added_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityProviderList {
    pub providers: Vec<IdentityProvider>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    pub token: Secret,
    pub expires_at: i64,
    /// The participant the token names (for a federated login: the name the organization's
    /// subject maps to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

// ---------- licenses ----------

/// Ask for a new asset: the server allocates its id in `scope` at the current key version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAsset {
    /// Path relative to the volume root, "/"-separated.
    pub path: String,
    pub scope: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenseRequest {
    pub token: Secret,
    /// Lowercase hex BLAKE3 of the calling executable.
    pub app_digest: String,
    pub action: Action,
    /// Asset ids (32 hex characters each); empty when `create` is given.
    #[serde(default)]
    pub assets: Vec<String>,
    #[serde(default)]
    pub create: Option<CreateAsset>,
    /// Ephemeral X25519 public key (64 hex characters) the content keys are sealed to, in a
    /// one-license HPKE context (an Ed25519-signed license). Give this or `session`.
    #[serde(default)]
    pub hpke_public_key: String,
    /// A license session (`POST /v1/sessions`): the keys are sealed under the session's
    /// per-license keys and the license carries a MAC instead of a signature (see
    /// [`crate::session`]).
    #[serde(default)]
    pub session: Option<String>,
}

/// Opens a license session to an ephemeral X25519 key of the device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    pub hpke_public_key: String,
}

/// A license session as the server announces it (signed: [`SignedSession`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub session_id: String,
    /// The device (certificate name) the session is bound to.
    pub device: String,
    /// The device's X25519 session key (hex).
    pub recipient: String,
    /// The HPKE encapsulated key (hex) from which both ends derive the session secret.
    pub enc: String,
    pub issued_at: i64,
    pub not_after: i64,
}

/// A session with the server's Ed25519 signature (hex) over
/// `"csap/v1/session\n" ‖ serde_json::to_vec(&session)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedSession {
    pub session: Session,
    pub signature: String,
}

/// One granted asset: its content key sealed in the license's HPKE context (see
/// [`crate::seal`]): the i-th grant is the i-th message of that context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub asset_id: String,
    pub path: String,
    pub scope: String,
    /// 16-byte scope id (hex), written into asset headers as the key id with `key_version`.
    pub scope_id: String,
    pub key_version: u32,
    pub rule_ids: Vec<String>,
    pub not_after: i64,
    /// HPKE ciphertext ‖ tag of the 32-byte content key (hex), AAD = license id ‖ asset id.
    pub sealed_key: String,
    /// The asset's recorded write generation (csapfs FORMAT.md §7); with `path`, what the
    /// mount binds the file to: a file at another path or an older generation is refused.
    #[serde(default)]
    pub generation: u32,
    /// A next generation a writer reserved and has not settled yet (also accepted: the writer
    /// may have crashed after putting it in the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_generation: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetDenial {
    pub asset_id: String,
    pub reason: Reason,
}

/// The signed body of a license.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct License {
    pub license_id: String,
    pub issued_at: i64,
    /// min over the grants (equal to issued_at + TTL when nothing was granted).
    pub not_after: i64,
    pub user: String,
    pub device: String,
    pub app_digest: String,
    pub action: Action,
    /// The X25519 public key (hex) the grants are sealed to.
    pub recipient: String,
    /// The HPKE encapsulated key (hex) of the license's one context: set up once per license,
    /// every grant's key is sealed in it in order. Empty when nothing was granted.
    pub enc: String,
    pub grants: Vec<Grant>,
    pub denials: Vec<AssetDenial>,
    /// Set on admin-issued licenses that bypassed the rules check.
    #[serde(default)]
    pub break_glass: bool,
    /// The license session this license was issued in; `enc` is then empty and the grants are
    /// sealed under the session's keys for this license id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// A license with the server's Ed25519 signature (hex) over `serde_json::to_vec(&license)` —
/// or, for a session license (`license.session` set), the HMAC-SHA256 tag (hex) under that
/// license's session MAC key over the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedLicense {
    pub license: License,
    pub signature: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameRequest {
    pub token: Secret,
    pub app_digest: String,
    pub new_path: String,
}

/// `POST /v1/assets/{id}/generation`: a writer moves an asset to its next write generation
/// in two steps (csapfs FORMAT.md §7): `reserve` records `generation + 1` as pending (or
/// answers the one pending already), the writer puts it in the file and syncs, then `settle`
/// makes it the recorded generation. Needs a `write` rule on the registered path.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationRequest {
    pub token: Secret,
    pub app_digest: String,
    pub step: GenerationStep,
    /// For `settle`: the pending generation now in the file. Ignored by `reserve`.
    #[serde(default)]
    pub generation: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenerationStep {
    Reserve,
    Settle,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssetInfo {
    pub asset_id: String,
    pub scope: String,
    pub scope_id: String,
    pub key_version: u32,
    pub path: String,
    pub creator: String,
    pub created_at: i64,
    /// The recorded write generation (0 for an asset never rewritten since registration).
    #[serde(default)]
    pub generation: u32,
    /// A reserved, not yet settled next generation.
    #[serde(default)]
    pub pending_generation: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Ed25519 public key (hex) that signs licenses.
    pub license_public_key: String,
    /// The authenticated peer, as the server sees it.
    pub peer: String,
    pub peer_kind: PrincipalKind,
    /// The key server's version (empty from servers before it was reported).
    #[serde(default)]
    pub version: String,
}

// ---------- admin ----------

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub name: String,
    pub csr_pem: String,
    /// The device's long-term X25519 public key (hex) for admin-issued licenses.
    pub hpke_public_key: String,
}

/// `GET /v1/directory`: what authz and ARDS need to know about identities when they run apart
/// from the key server (they poll it; see `keyserver::directory::MirroredDirectory`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirectorySnapshot {
    pub principals: Vec<PrincipalEntry>,
    /// User name → active (not disabled).
    pub users: std::collections::BTreeMap<String, bool>,
    /// Device name → has an active certificate.
    pub devices: std::collections::BTreeMap<String, bool>,
    /// Application digest → registered and not revoked.
    pub applications: std::collections::BTreeMap<String, bool>,
    pub workflows: std::collections::BTreeMap<String, csap_identity::WorkflowGrant>,
}

/// One issued client certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PrincipalEntry {
    pub serial: String,
    pub name: String,
    pub kind: PrincipalKind,
    pub revoked: bool,
}

/// `POST /v1/admin/principals`: a control-plane principal that is not a device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddPrincipalRequest {
    /// `workflow`, `auditor` or `service`.
    pub kind: String,
    pub name: String,
    pub csr_pem: String,
    /// Workflow only: key scopes it may authorize (`*`: every scope).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Workflow only: path prefixes it may authorize (`**`: every path).
    #[serde(default)]
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddPrincipalResponse {
    pub cert_pem: String,
    pub ca_pem: String,
    pub serial: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub cert_pem: String,
    pub ca_pem: String,
    pub serial: String,
    pub license_public_key: String,
}

/// One user as `GET /v1/admin/users` lists it (never its password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub name: String,
    pub disabled: bool,
    /// Unix seconds.
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub name: String,
    pub kind: PrincipalKind,
    pub serial: String,
    pub issued_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoked {
    pub revoked: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddUserRequest {
    pub name: String,
    pub password: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterAppRequest {
    pub digest: String,
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub vendor: Option<String>,
    /// What the build may map beyond the defaults (see [`AppCode`]).
    #[serde(default)]
    pub code: AppCode,
}

/// What a registered build may run beyond the mount's defaults: by default its executable,
/// root-owned system libraries and nothing else, in the mount's user namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppCode {
    /// Executable anonymous memory (a JIT compiler).
    #[serde(default)]
    pub allow_jit: bool,
    /// Running inside a user namespace other than the mount's (sandboxes, containers).
    #[serde(default)]
    pub allow_user_namespaces: bool,
    /// BLAKE3 digests (lowercase hex) of plug-ins and bundled libraries it may map from
    /// anywhere.
    #[serde(default)]
    pub libraries: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeAppRequest {
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppInfo {
    pub digest: String,
    pub name: String,
    pub version: String,
    pub vendor: Option<String>,
    pub registered_at: i64,
    pub revoked_at: Option<i64>,
    #[serde(default)]
    pub code: AppCode,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateScopeRequest {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScopeInfo {
    pub name: String,
    pub scope_id: String,
    pub current_version: u32,
    pub revoked_versions: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeKeyRequest {
    pub version: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    pub device: String,
    pub user: String,
    pub app_digest: String,
    /// Glob over registered asset paths: `*` within a segment, `**` across segments.
    pub assets: String,
    pub until: i64,
    #[serde(default = "default_issue_action")]
    pub action: Action,
    #[serde(default)]
    pub break_glass: bool,
    #[serde(default)]
    pub reason: Option<String>,
}

fn default_issue_action() -> Action {
    Action::Read
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: i64,
    pub time: i64,
    pub user: Option<String>,
    pub app_digest: Option<String>,
    pub device: Option<String>,
    pub asset: Option<String>,
    pub action: String,
    /// "grant", "deny" or "admin".
    pub decision: String,
    pub rule_ids: Vec<String>,
    pub reason: Option<String>,
    pub license_id: Option<String>,
    /// The asset's registered path when the decision was made (rows before the path column:
    /// the path at migration time).
    #[serde(default)]
    pub path: Option<String>,
    /// Which enforcement point decided: "keyserver" or "mount".
    #[serde(default = "default_source")]
    pub source: String,
    /// The calling process's uid (mount decisions).
    #[serde(default)]
    pub uid: Option<u32>,
    /// Identical decisions a mount aggregated into this row (1 for key server rows).
    #[serde(default = "default_count")]
    pub count: u32,
}

/// What `GET /v1/admin/audit/verify` found walking the audit trail's hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerification {
    /// Rows read (up to the first problem's classification).
    pub rows: u64,
    /// Rows from before the chain existed (NULL chain), not checked.
    pub unchained: u64,
    /// The last row that links, hex (none before the first chained row).
    pub head: Option<String>,
    /// The first row that does not link; none: the trail is intact.
    pub tamper: Option<AuditTamper>,
}

/// The first row of the audit trail that does not link, and the likeliest cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditTamper {
    /// Row `id`'s content (or chain) is not what was chained.
    Edited { id: i64 },
    /// Rows between `after` and `id` were removed.
    Deleted { id: i64, after: i64 },
    /// Row `id` holds the content row `content_of` was chained with.
    Reordered { id: i64, content_of: i64 },
}

impl std::fmt::Display for AuditTamper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Edited { id } => write!(f, "row {id} was edited"),
            Self::Deleted { id, after } => {
                write!(f, "rows between {after} and {id} were deleted (row {id} does not follow row {after})")
            }
            Self::Reordered { id, content_of } => {
                write!(
                    f,
                    "rows were reordered: row {id} holds row {content_of}'s content"
                )
            }
        }
    }
}

fn default_source() -> String {
    "keyserver".into()
}

fn default_count() -> u32 {
    1
}

/// One decision a mount made itself (`POST /v1/audit`), as it sits in the mount's spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountAuditRecord {
    /// Position in the mount's spool: 1, 2, 3, … without gaps; a resend is recognised by it.
    pub seq: u64,
    /// Unix seconds of the first of `count` identical decisions.
    pub time: i64,
    pub user: Option<String>,
    pub uid: Option<u32>,
    pub app_digest: Option<String>,
    /// The device the mount believes it is. Ignored: the key server stamps the device from
    /// the peer certificate.
    #[serde(default)]
    pub device: Option<String>,
    /// Volume-relative path.
    pub path: String,
    /// Asset id (32 hex) when the mount had read the header.
    pub asset: Option<String>,
    pub action: Action,
    /// "grant" or "deny".
    pub decision: String,
    pub reason: String,
    /// Identical decisions (same everything but time) aggregated into this record.
    pub count: u32,
}

/// `POST /v1/audit`: a batch of a mount's own decisions, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditBatch {
    /// The spool's id (32 hex), fixed when the spool was created: sequence numbers count
    /// within it.
    pub spool: String,
    pub records: Vec<MountAuditRecord>,
}

/// The answer to an [`AuditBatch`]: every record up to `through_seq` is on record (new ones
/// `accepted`, resent ones `duplicates`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditBatchAck {
    pub accepted: u32,
    pub duplicates: u32,
    pub through_seq: u64,
}

/// `GET /v1/admin/audit/query`: filters, all optional, combined with AND.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Glob over asset paths: `*` within a segment, `**` across segments.
    pub path: Option<String>,
    pub user: Option<String>,
    pub device: Option<String>,
    /// A BLAKE3 digest, or the name of registered applications.
    pub app: Option<String>,
    /// "grant" or "deny".
    pub decision: Option<String>,
    /// Unix seconds, inclusive.
    pub since: Option<i64>,
    /// Unix seconds, exclusive.
    pub until: Option<i64>,
    /// Most rows returned (the newest that match), default 100, at most 10,000.
    pub limit: Option<u32>,
}

/// Formats unix seconds as RFC 3339 UTC (for CLI output): the policy model's formatter.
pub use csap_policy::request::format_time as rfc3339;

/// Parses a point in time: unix seconds, RFC 3339, or relative to `now` as `+90s`, `+30m`,
/// `+4h`, `+2d`.
pub fn parse_time(s: &str, now: i64) -> Option<i64> {
    let s = s.trim();
    if let Some(rel) = s.strip_prefix('+') {
        let (num, unit) =
            rel.split_at(rel.find(|c: char| !c.is_ascii_digit()).unwrap_or(rel.len()));
        let n: i64 = num.parse().ok()?;
        let mult = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return None,
        };
        return now.checked_add(n.checked_mul(mult)?);
    }
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("+4h", 100), Some(100 + 4 * 3600));
        assert_eq!(parse_time("+90", 100), Some(190));
        assert_eq!(parse_time("1700000000", 0), Some(1_700_000_000));
        assert_eq!(parse_time("2026-11-23T09:00:00Z", 0), Some(1_795_424_400));
        assert_eq!(parse_time("+4y", 0), None);
        assert_eq!(parse_time("tomorrow", 0), None);
        assert_eq!(rfc3339(1_795_424_400), "2026-11-23T09:00:00Z");
    }
}
