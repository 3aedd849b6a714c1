//! Delegated authentication against a real OpenID Connect provider (`oidc-provider` under node,
//! `csap_testkit::oidc`): an organization's person logs in with an ID token of the
//! organization's provider and gets a csap token that licenses what their rules allow; every
//! bad token — expired, for another client, from another issuer, badly signed, for another
//! login, of an unknown organization — is refused with its reason and audited.

use std::sync::Arc;

use authz::{Action, Evaluator};
use csap_testkit::oidc::{id_token, oidc_provider, OidcClient, OidcProvider};
use csap_testkit::postgres::Engine;
use keyserver::client::{AdminClient, ClientError};
use keyserver::testing::{provision, Loopback, Provisioned, RuleFor};
use keyserver::wire::Reason;
use keyserver::SwappableRules;

const ORG: &str = "acme-post";
const CLIENT: &str = "csap-test";
const REDIRECT: &str = "http://127.0.0.1:9/callback";
const DEVICE: &str = "ws-07";
const APP: &str = "nuke";
const SCOPE: &str = "shot010";
const UID: u32 = 1000;

struct Env {
    /// The store's engine (holding a PostgreSQL database keeps its server running).
    _engine: Engine,
    _dir: tempfile::TempDir,
    lb: Loopback,
    admin: AdminClient,
    dev: Provisioned,
    rules: Arc<SwappableRules>,
    provider: OidcProvider,
}

fn digest() -> String {
    blake3::hash(APP.as_bytes()).to_hex().to_string()
}

/// A rule for `user` on the test device and application, under `show/`.
fn rules_for(user: &str) -> Evaluator {
    let now = keyserver::now().unwrap();
    let d = digest();
    Evaluator::new([RuleFor {
        id: "r-vendor",
        user,
        device: DEVICE,
        app_digest: &d,
        path_like: "show/*",
        actions: &[Action::Read, Action::Create, Action::License],
        not_before: now - 3600,
        not_after: now + 86_400,
    }
    .build()])
    .unwrap()
}

fn client(id: &str) -> OidcClient {
    OidcClient {
        client_id: id.into(),
        redirect_uris: vec![REDIRECT.into()],
    }
}

/// A key server with a device (a local user `local-bob` provisioned it) and one provider.
async fn env(engine: Engine) -> Option<Env> {
    let provider = oidc_provider(&[client(CLIENT), client("other-client")], 120)?;
    let dir = tempfile::tempdir().unwrap();
    let rules = Arc::new(SwappableRules::new(rules_for("nobody")));
    let mut cfg = keyserver::testing::loopback_config(&dir.path().join("ks"), rules.clone());
    if let Some(url) = engine.url() {
        cfg.store = authz::pg::Engine::postgres(authz::pg::Target::parse(url, None).unwrap());
    }
    let lb = keyserver::testing::spawn_with(cfg).await.unwrap();
    let dev = provision(
        &lb,
        DEVICE,
        &dir.path().join("dev"),
        "local-bob",
        APP,
        SCOPE,
    )
    .await
    .unwrap();
    let admin = lb.admin().unwrap();
    Some(Env {
        _engine: engine,
        _dir: dir,
        lb,
        admin,
        dev,
        rules,
        provider,
    })
}

impl Env {
    /// An ID token for `login` as the browser flow gets it (off the async runtime: the test
    /// kit's HTTP walk has a runtime of its own).
    async fn token_for(&self, login: &str, client_id: &str, nonce: &str) -> String {
        let issuer = self.provider.issuer.clone();
        let (login, client_id, nonce) =
            (login.to_string(), client_id.to_string(), nonce.to_string());
        tokio::task::spawn_blocking(move || {
            id_token(&issuer, &client_id, REDIRECT, &login, &nonce).unwrap()
        })
        .await
        .unwrap()
    }

    async fn trust(&self, org: &str, issuer: &str, client_id: &str, pseudonymous: bool) {
        self.admin
            .put_identity_provider(org, issuer, client_id, pseudonymous)
            .await
            .unwrap();
    }

    async fn login(
        &self,
        org: &str,
        token: &str,
        nonce: &str,
    ) -> Result<(keyserver::UserToken, i64, String), ClientError> {
        self.dev.client.login_oidc(org, token, nonce, UID).await
    }

    /// The login audit rows, newest last.
    async fn login_audit(&self) -> Vec<(String, Option<String>, Option<String>)> {
        let log = self.admin.audit_tail(1000).await.unwrap();
        log.into_iter()
            .filter(|r| r.action == "login")
            .map(|r| (r.decision.clone(), r.user.clone(), r.reason.clone()))
            .collect()
    }

    async fn assert_refused(&self, got: Result<impl std::fmt::Debug, ClientError>, want: Reason) {
        match got {
            Err(ClientError::Denied(reason)) => assert_eq!(reason, want),
            other => panic!("expected {want:?}, got {other:?}"),
        }
        let audit = self.login_audit().await;
        let (decision, _, reason) = audit.last().expect("the refusal is audited");
        assert_eq!(decision, "deny");
        let reason = reason.as_deref().unwrap_or_default();
        assert!(reason.starts_with(want.as_str()), "{reason}");
    }
}

async fn an_organizations_id_token_logs_its_person_in_for_what_their_rules_allow(engine: Engine) {
    let Some(e) = env(engine).await else { return };
    e.trust(ORG, &e.provider.issuer, CLIENT, false).await;
    // Login clients learn where to send the person.
    let idp = e.dev.client.identity_provider(ORG).await.unwrap();
    assert_eq!(
        (idp.issuer.as_str(), idp.client_id.as_str()),
        (e.provider.issuer.as_str(), CLIENT)
    );

    let id = e.token_for("alice", CLIENT, "n-1").await;
    let (token, expires, user) = e.login(ORG, &id, "n-1").await.unwrap();
    assert_eq!(user, "alice@acme-post");
    assert!(expires > keyserver::now().unwrap());
    let audit = e.login_audit().await;
    let (decision, who, reason) = audit.last().unwrap();
    assert_eq!(
        (decision.as_str(), who.as_deref()),
        ("grant", Some("alice@acme-post"))
    );
    let reason = reason.as_deref().unwrap();
    assert!(
        reason.contains("through acme-post") && reason.contains(&e.provider.issuer),
        "{reason}"
    );

    // The token is a csap token like any: a rule for the participant licenses, none refuses.
    let d = digest();
    let refused = e.dev.client.create(&token, &d, "show/a.exr", SCOPE).await;
    assert!(
        matches!(refused, Err(ClientError::Denied(Reason::NoRule))),
        "{refused:?}"
    );
    e.rules.replace(rules_for("alice@acme-post"));
    let lic = e
        .dev
        .client
        .create(&token, &d, "show/a.exr", SCOPE)
        .await
        .unwrap();
    assert_eq!(lic.grants.len(), 1);

    // A second login is the same participant; a disabled one logs in no more.
    let again = e.token_for("alice", CLIENT, "n-2").await;
    assert_eq!(
        e.login(ORG, &again, "n-2").await.unwrap().2,
        "alice@acme-post"
    );
    e.admin.disable_user("alice@acme-post").await.unwrap();
    let third = e.token_for("alice", CLIENT, "n-3").await;
    e.assert_refused(e.login(ORG, &third, "n-3").await, Reason::UserDisabled)
        .await;
    // And no password ever logs the federated participant in.
    e.admin.enable_user("alice@acme-post").await.unwrap();
    let by_password = e
        .dev
        .client
        .login("alice@acme-post", "!federated", UID)
        .await;
    assert!(
        matches!(by_password, Err(ClientError::Denied(Reason::BadPassword))),
        "{by_password:?}"
    );
}

async fn bad_id_tokens_are_refused_with_their_reason_and_audited(engine: Engine) {
    let Some(e) = env(engine).await else { return };
    e.trust(ORG, &e.provider.issuer, CLIENT, false).await;
    let good = e.token_for("alice", CLIENT, "n-1").await;

    e.assert_refused(
        e.login("hamilton", &good, "n-1").await,
        Reason::UnknownOrganization,
    )
    .await;
    // Issued for another login: the nonce the client sent is not the token's.
    e.assert_refused(e.login(ORG, &good, "n-other").await, Reason::IdTokenInvalid)
        .await;
    e.assert_refused(
        e.login(ORG, "not.a.jwt", "n-1").await,
        Reason::IdTokenInvalid,
    )
    .await;

    // Signed over other claims: one character of the signature changed.
    let (head, sig) = good.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    let forged = format!("{head}.{flipped}{}", &sig[1..]);
    e.assert_refused(
        e.login(ORG, &forged, "n-1").await,
        Reason::IdTokenBadSignature,
    )
    .await;
    // Claims changed under the original signature (sub alice → mallory).
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[1] = reencode_claims(&parts[1], |c| c["sub"] = "mallory".into());
    e.assert_refused(
        e.login(ORG, &parts.join("."), "n-1").await,
        Reason::IdTokenBadSignature,
    )
    .await;

    // For another client of the same provider.
    let other = e.token_for("alice", "other-client", "n-1").await;
    e.assert_refused(
        e.login(ORG, &other, "n-1").await,
        Reason::IdTokenWrongAudience,
    )
    .await;

    // From another issuer: globex trusts a provider of its own; acme's token is not from it.
    let globex = oidc_provider(&[client(CLIENT)], 120).unwrap();
    e.trust("globex-vfx", &globex.issuer, CLIENT, false).await;
    e.assert_refused(
        e.login("globex-vfx", &good, "n-1").await,
        Reason::IdTokenWrongIssuer,
    )
    .await;

    // Expired by the key server's clock (the token lives 120 s), and not yet valid.
    e.lb.clock.advance(200);
    e.assert_refused(e.login(ORG, &good, "n-1").await, Reason::IdTokenExpired)
        .await;
    e.lb.clock.advance(-400);
    e.assert_refused(e.login(ORG, &good, "n-1").await, Reason::IdTokenExpired)
        .await;
    e.lb.clock.advance(200);

    // The same token still logs in: every refusal was the token's, not a broken server.
    assert_eq!(
        e.login(ORG, &good, "n-1").await.unwrap().2,
        "alice@acme-post"
    );
    // Once: the token replayed (from a log, another device: the nonce is in the token) is
    // refused and audited.
    e.assert_refused(e.login(ORG, &good, "n-1").await, Reason::IdTokenInvalid)
        .await;
    let audit = e.login_audit().await;
    let reason = audit
        .last()
        .unwrap()
        .2
        .as_deref()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("replayed"), "{reason}");
    // No refused token provisioned anyone.
    let users: Vec<String> = e
        .admin
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert!(!users.iter().any(|u| u.contains("mallory")), "{users:?}");
}

async fn a_pseudonymous_organizations_people_are_stable_pseudonyms(engine: Engine) {
    let Some(e) = env(engine).await else { return };
    e.trust(ORG, &e.provider.issuer, CLIENT, true).await;
    let first = e.token_for("alice", CLIENT, "n-1").await;
    let (_, _, name) = e.login(ORG, &first, "n-1").await.unwrap();
    assert!(
        name.starts_with("p-") && name.ends_with("@acme-post"),
        "{name}"
    );
    assert!(!name.contains("alice"));
    let audit = format!("{:?}", e.admin.audit_tail(1000).await.unwrap());
    assert!(
        !audit.contains("alice"),
        "the subject never reaches the audit trail"
    );
    // Stable across logins and across a replacement of the provider's settings.
    e.trust(ORG, &e.provider.issuer, CLIENT, true).await;
    let second = e.token_for("alice", CLIENT, "n-2").await;
    assert_eq!(e.login(ORG, &second, "n-2").await.unwrap().2, name);
    let bob = e.token_for("bob", CLIENT, "n-3").await;
    assert_ne!(e.login(ORG, &bob, "n-3").await.unwrap().2, name);
}

async fn providers_are_managed_by_admins_and_a_local_user_is_never_taken_over(engine: Engine) {
    let Some(e) = env(engine).await else { return };
    // Only https (or loopback http) providers.
    let plain = e
        .admin
        .put_identity_provider(ORG, "http://login.acme.example", CLIENT, false)
        .await;
    assert!(plain.is_err(), "{plain:?}");
    e.trust(ORG, &e.provider.issuer, CLIENT, false).await;
    let listed = e.admin.list_identity_providers().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].organization, ORG);

    // A local user already named like the participant is not logged in by the provider.
    e.admin
        .add_user("carol@acme-post", "a-password-1")
        .await
        .unwrap();
    let carol = e.token_for("carol", CLIENT, "n-1").await;
    e.assert_refused(e.login(ORG, &carol, "n-1").await, Reason::IdTokenInvalid)
        .await;

    e.admin.remove_identity_provider(ORG).await.unwrap();
    let alice = e.token_for("alice", CLIENT, "n-2").await;
    e.assert_refused(
        e.login(ORG, &alice, "n-2").await,
        Reason::UnknownOrganization,
    )
    .await;
    assert!(e.admin.remove_identity_provider(ORG).await.is_err());
    // No participant of the organization was granted a login.
    let audit = e.login_audit().await;
    assert!(
        !audit
            .iter()
            .any(|(d, user, _)| d == "grant" && user.as_deref().is_some_and(|u| u.ends_with(ORG))),
        "{audit:?}"
    );
}

/// `segment` (base64url JSON) with `change` applied to its claims.
fn reencode_claims(segment: &str, change: impl FnOnce(&mut serde_json::Value)) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap();
    change(&mut claims);
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
}

csap_testkit::on_both_engines!(
    an_organizations_id_token_logs_its_person_in_for_what_their_rules_allow,
    bad_id_tokens_are_refused_with_their_reason_and_audited,
    a_pseudonymous_organizations_people_are_stable_pseudonyms,
    providers_are_managed_by_admins_and_a_local_user_is_never_taken_over,
);
