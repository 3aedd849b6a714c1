//! The key server's PostgreSQL schema (schema `keyserver`) and its migrations: the SQLite
//! engine's tables (`store::sqlite::schema` after its step 6) in PostgreSQL types. Version
//! numbers count per engine.
//!
//! Differences from SQLite: `audit.user` is `username` (`user` is reserved), flags are
//! `BOOLEAN`, blobs `BYTEA`; `revocations.seq` is assigned under the revocation lock inside the
//! committing transaction (see `revocations`), not by a sequence, so sequence numbers are in
//! commit order across replicas.

/// The PostgreSQL schema holding the key server's tables.
pub const SCHEMA: &str = "keyserver";

/// One step per version (`authz::pg::migrate`). Append only.
pub(crate) const MIGRATIONS: &[&str] = &[SCHEMA_1, SCHEMA_2, SCHEMA_3, SCHEMA_4, SCHEMA_5];

const SCHEMA_1: &str = "
CREATE TABLE certs (
  serial TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('device', 'admin', 'workflow', 'auditor', 'service')),
  hpke_public TEXT,
  issued_at BIGINT NOT NULL,
  revoked_at BIGINT
);
CREATE INDEX certs_name ON certs(name);
CREATE TABLE workflows (
  name TEXT PRIMARY KEY,
  scopes TEXT NOT NULL,
  paths TEXT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE TABLE users (
  name TEXT PRIMARY KEY,
  password_hash TEXT NOT NULL,
  generation BIGINT NOT NULL DEFAULT 1,
  disabled BOOLEAN NOT NULL DEFAULT FALSE,
  created_at BIGINT NOT NULL
);
CREATE TABLE applications (
  digest TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  version TEXT NOT NULL,
  vendor TEXT,
  registered_at BIGINT NOT NULL,
  revoked_at BIGINT,
  allow_jit BOOLEAN NOT NULL DEFAULT FALSE,
  allow_userns BOOLEAN NOT NULL DEFAULT FALSE,
  libraries TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX applications_name ON applications(name, version);
CREATE TABLE scopes (
  name TEXT PRIMARY KEY,
  scope_id BYTEA NOT NULL UNIQUE,
  current_version BIGINT NOT NULL,
  created_at BIGINT NOT NULL
);
CREATE TABLE scope_versions (
  scope TEXT NOT NULL REFERENCES scopes(name),
  version BIGINT NOT NULL,
  nonce BYTEA NOT NULL,
  sealed_seed BYTEA NOT NULL,
  created_at BIGINT NOT NULL,
  revoked_at BIGINT,
  PRIMARY KEY (scope, version)
);
CREATE TABLE assets (
  asset_id TEXT PRIMARY KEY,
  scope TEXT NOT NULL REFERENCES scopes(name),
  version BIGINT NOT NULL,
  path TEXT NOT NULL,
  creator TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  generation BIGINT NOT NULL DEFAULT 0,
  pending_generation BIGINT
);
CREATE INDEX assets_path ON assets(path);
CREATE TABLE audit (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  time BIGINT NOT NULL,
  username TEXT,
  app_digest TEXT,
  device TEXT,
  asset TEXT,
  action TEXT NOT NULL,
  decision TEXT NOT NULL,
  rule_ids TEXT NOT NULL,
  reason TEXT,
  license_id TEXT,
  path TEXT,
  source TEXT NOT NULL DEFAULT 'keyserver',
  uid BIGINT,
  count BIGINT NOT NULL DEFAULT 1,
  spool TEXT,
  seq BIGINT
);
CREATE INDEX audit_time ON audit(time);
CREATE INDEX audit_path ON audit(path text_pattern_ops);
CREATE INDEX audit_user ON audit(username, time);
CREATE UNIQUE INDEX audit_spool_seq ON audit(device, spool, seq) WHERE seq IS NOT NULL;
CREATE TABLE revocations (
  seq BIGINT PRIMARY KEY,
  time BIGINT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('user', 'device', 'app', 'key_version')),
  subject TEXT NOT NULL,
  version BIGINT
);
";

/// 2: the root key's check value (`RootKey::seal_check`), one row, written at first start.
const SCHEMA_2: &str = "
CREATE TABLE root_key_check (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  nonce BYTEA NOT NULL,
  sealed BYTEA NOT NULL
);
";

/// 3: license sessions, shared by the replicas (`crate::session`); the secret sealed under the
/// root key's session key, bound to the row.
const SCHEMA_3: &str = "
CREATE TABLE license_sessions (
  id TEXT PRIMARY KEY,
  device TEXT NOT NULL,
  recipient BYTEA NOT NULL,
  not_after BIGINT NOT NULL,
  nonce BYTEA NOT NULL,
  sealed BYTEA NOT NULL
);
CREATE INDEX license_sessions_not_after ON license_sessions(not_after);
CREATE INDEX license_sessions_device ON license_sessions(device);
";

/// 4: organizations' OpenID Connect providers (delegated authentication).
const SCHEMA_4: &str = "
CREATE TABLE identity_providers (
  organization TEXT PRIMARY KEY,
  issuer TEXT NOT NULL,
  client_id TEXT NOT NULL,
  pseudonymous BOOLEAN NOT NULL,
  added_at BIGINT NOT NULL,
  pseudonym_nonce BYTEA,
  pseudonym_key BYTEA
);
";

/// 5: the audit trail's hash chain (`store::audit_chain`); rows before it keep NULL.
const SCHEMA_5: &str = "ALTER TABLE audit ADD COLUMN chain BYTEA;";
