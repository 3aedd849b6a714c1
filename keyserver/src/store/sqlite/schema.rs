//! The key server's SQLite schema and its migrations.

use authz::migrate::Step;

/// The key server's schema, one step per version (`authz::migrate`). Append only.
pub(crate) const MIGRATIONS: &[Step] = &[
    // 1: initial schema
    Step::Sql(
        "CREATE TABLE certs (
        serial TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('device', 'admin')),
        hpke_public TEXT,
        issued_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE INDEX certs_name ON certs(name);
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        generation INTEGER NOT NULL DEFAULT 1,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE applications (
        digest TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        vendor TEXT,
        registered_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE TABLE scopes (
        name TEXT PRIMARY KEY,
        scope_id BLOB NOT NULL UNIQUE,
        current_version INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE scope_versions (
        scope TEXT NOT NULL REFERENCES scopes(name),
        version INTEGER NOT NULL,
        nonce BLOB NOT NULL,
        sealed_seed BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER,
        PRIMARY KEY (scope, version)
    );
    CREATE TABLE assets (
        asset_id TEXT PRIMARY KEY,
        scope TEXT NOT NULL REFERENCES scopes(name),
        version INTEGER NOT NULL,
        path TEXT NOT NULL,
        creator TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX assets_path ON assets(path);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time INTEGER NOT NULL,
        user TEXT,
        app_digest TEXT,
        device TEXT,
        asset TEXT,
        action TEXT NOT NULL,
        decision TEXT NOT NULL,
        rule_ids TEXT NOT NULL,
        reason TEXT,
        license_id TEXT
    );",
    ),
    // 2: control-plane principals (workflow, auditor, service certificates) and what an admin
    // granted each workflow. SQLite cannot widen a CHECK in place: rebuild `certs`.
    Step::Sql(
        "CREATE TABLE certs_v2 (
        serial TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('device', 'admin', 'workflow', 'auditor', 'service')),
        hpke_public TEXT,
        issued_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    INSERT INTO certs_v2 SELECT serial, name, kind, hpke_public, issued_at, revoked_at FROM certs;
    DROP TABLE certs;
    ALTER TABLE certs_v2 RENAME TO certs;
    CREATE INDEX certs_name ON certs(name);
    CREATE TABLE workflows (
        name TEXT PRIMARY KEY,
        scopes TEXT NOT NULL,
        paths TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );",
    ),
    // 3: identity revocation events (see crate::revocation)
    Step::Sql(
        "CREATE TABLE revocations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        time INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('user', 'device', 'app', 'key_version')),
        subject TEXT NOT NULL,
        version INTEGER
    );",
    ),
    // 4: one audit trail for every enforcement point: the asset's path at decision time, who
    // decided (`source`), the caller's uid, aggregated counts, and the (spool, seq) of rows a
    // mount shipped, unique per device so a resend is recognised.
    Step::Sql(
        "ALTER TABLE audit ADD COLUMN path TEXT;
    ALTER TABLE audit ADD COLUMN source TEXT NOT NULL DEFAULT 'keyserver';
    ALTER TABLE audit ADD COLUMN uid INTEGER;
    ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE audit ADD COLUMN spool TEXT;
    ALTER TABLE audit ADD COLUMN seq INTEGER;
    UPDATE audit SET path = (SELECT a.path FROM assets a WHERE a.asset_id = audit.asset)
        WHERE asset IS NOT NULL;
    CREATE INDEX audit_time ON audit(time);
    CREATE INDEX audit_path ON audit(path);
    CREATE INDEX audit_user ON audit(user, time);
    CREATE UNIQUE INDEX audit_spool_seq ON audit(device, spool, seq) WHERE seq IS NOT NULL;",
    ),
    // 5: each asset's write generation and a reserved next one (csapfs FORMAT.md §7); every
    // asset registered before starts at generation 0, which is what its header says.
    Step::Sql(
        "ALTER TABLE assets ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE assets ADD COLUMN pending_generation INTEGER;",
    ),
    // 6: what each build may map beyond the mount's defaults (wire::AppCode)
    Step::Sql(
        "ALTER TABLE applications ADD COLUMN allow_jit INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE applications ADD COLUMN allow_userns INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE applications ADD COLUMN libraries TEXT NOT NULL DEFAULT '[]';",
    ),
    // 7: the root key's check value (`RootKey::seal_check`), one row, written at first start
    Step::Sql(
        "CREATE TABLE root_key_check (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        nonce BLOB NOT NULL,
        sealed BLOB NOT NULL
    );",
    ),
    // 8: license sessions, so they outlive a restart (`crate::session`); the secret sealed
    // under the root key's session key, bound to the row
    Step::Sql(
        "CREATE TABLE license_sessions (
        id TEXT PRIMARY KEY,
        device TEXT NOT NULL,
        recipient BLOB NOT NULL,
        not_after INTEGER NOT NULL,
        nonce BLOB NOT NULL,
        sealed BLOB NOT NULL
    );
    CREATE INDEX license_sessions_not_after ON license_sessions(not_after);
    CREATE INDEX license_sessions_device ON license_sessions(device);",
    ),
    // 9: organizations' OpenID Connect providers (delegated authentication)
    Step::Sql(
        "CREATE TABLE identity_providers (
        organization TEXT PRIMARY KEY,
        issuer TEXT NOT NULL,
        client_id TEXT NOT NULL,
        pseudonymous INTEGER NOT NULL,
        added_at INTEGER NOT NULL,
        pseudonym_nonce BLOB,
        pseudonym_key BLOB
    );",
    ),
    // 10: the audit trail's hash chain (`store::audit_chain`); rows before it keep NULL
    Step::Sql("ALTER TABLE audit ADD COLUMN chain BLOB;"),
];
