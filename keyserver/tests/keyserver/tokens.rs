//! Issue 12: user tokens are bound to the device and the uid they were issued for. The key
//! server refuses a token presented by another device (401, on record) and tokens from before
//! the binding (401, "log in again").

use super::*;

/// The login's client certificate names the device, the request the uid; both are in the
/// token's claims and the grant's audit row names the uid.
#[tokio::test]
async fn login_binds_the_token_to_the_device_and_uid() {
    let e = env().await;
    let (token, _) = e
        .dev
        .client
        .login(USER, "password-1234", 4321)
        .await
        .unwrap();
    let claims = keyserver::token::read_claims_unverified(token.as_str()).unwrap();
    assert_eq!((claims.device.as_str(), claims.uid), (DEVICE, 4321));
    e.assert_audited("grant", "token for uid 4321").await;
    // A login that names no uid is a malformed request, not a token for "some" uid.
    let raw = identity_client(&e.dev.device_dir)
        .post(format!("{}/v1/login", e.lb.url))
        .json(&serde_json::json!({"user": USER, "password": "password-1234"}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    let body: serde_json::Value = raw.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("uid"), "{body}");
}

/// Alice's token, issued on ws-07, presented by ws-08 (enrolled, rate limits and all): 401
/// `token_wrong_device` with advice, a deny row against ws-08; ws-07 still gets its license.
#[tokio::test]
async fn a_token_from_another_device_is_refused() {
    let e = env().await;
    let id = e.create("show/seq1/a.exr").await;
    let other_dir = e.dir.path().join("ws-08");
    e.admin.enroll_device("ws-08", &other_dir).await.unwrap();
    let other = LicenseClient::connect(&e.lb.url, &other_dir).await.unwrap();
    let r = other
        .request(&e.dev.token, &e.dev.app_digest, Action::Read, &[id])
        .await;
    assert_eq!(denied(r), Reason::TokenWrongDevice);
    let log = e.audit().await;
    let row = log
        .iter()
        .find(|r| r.reason.as_deref() == Some("token_wrong_device"))
        .unwrap_or_else(|| panic!("no token_wrong_device row: {log:#?}"));
    assert_eq!(row.decision, "deny");
    assert_eq!(row.device.as_deref(), Some("ws-08"));
    assert_eq!(row.user.as_deref(), Some("alice (unverified)"));
    // The status and body a client sees.
    let raw = identity_client(&other_dir)
        .post(format!("{}/v1/licenses", e.lb.url))
        .json(&serde_json::json!({
            "token": e.dev.token.as_str(),
            "app_digest": e.dev.app_digest,
            "action": "read",
            "assets": [hex::encode(id)],
            "hpke_public_key": "00".repeat(32),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 401);
    let body: serde_json::Value = raw.json().await.unwrap();
    assert_eq!(body["reason"], "token_wrong_device", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("csap login"),
        "{body}"
    );
    // On its own device the same token still works.
    assert_eq!(e.read(id).await.grants.len(), 1);
}

/// A token in the format from before the binding ("v1.", no device or uid), signed with the
/// server's own token key, is refused as outdated with advice to log in again.
#[tokio::test]
async fn tokens_from_before_the_binding_are_refused() {
    let e = env().await;
    let id = e.create("show/seq1/a.exr").await;
    let key_bytes = std::fs::read(e.dir.path().join("ks/token.key")).unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key_bytes);
    let now = keyserver::now().unwrap();
    let claims = serde_json::json!({
        "user": USER, "issued_at": now, "expires_at": now + 3600, "generation": 0
    });
    let body = format!("v1.{}", hex::encode(claims.to_string()));
    let tag = ring::hmac::sign(&key, body.as_bytes());
    let old = keyserver::UserToken::new(format!("{body}.{}", hex::encode(tag.as_ref())));
    let r = e
        .dev
        .client
        .request(&old, &e.dev.app_digest, Action::Read, &[id])
        .await;
    match r {
        Err(err @ ClientError::Denied(Reason::TokenOutdated)) => {
            assert!(err.to_string().contains("csap login"), "{err}")
        }
        other => panic!("an outdated token: {:?}", other.map(|_| "granted")),
    }
    e.assert_audited("deny", "token_outdated").await;
}
