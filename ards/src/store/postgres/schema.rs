//! The ARDS schema on PostgreSQL (schema `ards`), one step per version (`authz::pg::migrate`).
//! Append only. The tables are the SQLite engine's (`store::sqlite::db`), in PostgreSQL's
//! types; version numbers count per engine (both are at 1).

pub const MIGRATIONS: &[&str] = &[SCHEMA_1];

const SCHEMA_1: &str = "
CREATE TABLE rules(
    id           TEXT PRIMARY KEY,
    issuer       TEXT NOT NULL,
    signed       TEXT NOT NULL,     -- SignedRule as JSON
    not_before   BIGINT NOT NULL,
    not_after    BIGINT NOT NULL,
    release_at   BIGINT NOT NULL,   -- not_before - lead time, fixed at publish
    published_at BIGINT NOT NULL
);
CREATE INDEX rules_release ON rules(release_at);
CREATE INDEX rules_expiry ON rules(not_after);
-- One row per (rule, target PEP): pending -> released -> removed, or pending -> removed.
CREATE TABLE targets(
    rule_id TEXT NOT NULL REFERENCES rules(id),
    pep_id  TEXT NOT NULL,
    state   TEXT NOT NULL CHECK (state IN ('pending', 'released', 'removed')),
    PRIMARY KEY (rule_id, pep_id)
);
CREATE INDEX targets_pep ON targets(pep_id, state);
CREATE INDEX targets_state ON targets(state);
-- Revocations, also of rules not (yet) held: a late publish must never release them.
CREATE TABLE tombstones(
    rule_id     TEXT PRIMARY KEY,
    issuer      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    revoked_at  BIGINT NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE TABLE peps(
    pep_id TEXT PRIMARY KEY,
    head   BIGINT NOT NULL          -- latest revision issued to this PEP
);
CREATE TABLE events(
    pep_id  TEXT NOT NULL,
    rev     BIGINT NOT NULL,
    rule_id TEXT NOT NULL,
    kind    TEXT NOT NULL CHECK (kind IN ('upsert', 'remove')),
    reason  TEXT,
    at      BIGINT NOT NULL,
    PRIMARY KEY (pep_id, rev)
);
CREATE INDEX events_rule ON events(pep_id, rule_id, rev);
CREATE TABLE exceptions(
    id                 BIGSERIAL PRIMARY KEY,
    dedup_key          TEXT NOT NULL,
    pep_id             TEXT NOT NULL,
    participant        TEXT NOT NULL,
    application_digest TEXT NOT NULL,
    device             TEXT NOT NULL,
    asset_path         TEXT NOT NULL,
    asset_scope        TEXT NOT NULL,
    action             TEXT NOT NULL,
    first_seen         BIGINT NOT NULL,
    last_seen          BIGINT NOT NULL,
    count              BIGINT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('open', 'released')),
    released_rules     TEXT NOT NULL   -- JSON array of rule ids
);
CREATE INDEX exceptions_dedup ON exceptions(dedup_key, last_seen);
";
