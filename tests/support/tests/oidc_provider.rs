//! The test provider is the real thing: a code flow with PKCE through oidc-provider's own
//! login and consent pages yields a signed ID token for the login name, the nonce, the client
//! and the configured lifetime. This pins the fixture the key server's ID-token verification
//! is tested against (keyserver/tests/federation.rs).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use csap_testkit::oidc::{
    authorization_url, browser_login, code_in, exchange_code, oidc_provider, OidcClient,
};

#[test]
fn code_flow_through_the_real_pages_yields_an_id_token() {
    let redirect = "http://127.0.0.1:9/callback".to_string();
    let client = OidcClient {
        client_id: "csap-test".into(),
        redirect_uris: vec![redirect.clone()],
    };
    let Some(provider) = oidc_provider(&[client], 120) else {
        return;
    };
    let verifier = "a-pkce-verifier-of-at-least-forty-three-characters-0123456789";
    let auth = authorization_url(
        &provider.issuer,
        "csap-test",
        &redirect,
        verifier,
        "n-42",
        "s-7",
    );
    let back = browser_login(&auth, "alice").expect("walk the provider's pages");
    assert!(back.starts_with(&redirect), "redirected to {back}");
    assert!(back.contains("state=s-7"), "{back}");
    let exchange = |code: &str, verifier: &str| {
        exchange_code(&provider.issuer, "csap-test", code, &redirect, verifier).unwrap()
    };
    let (status, tokens) = exchange(code_in(&back).unwrap(), verifier);
    assert_eq!(status, 200, "{tokens}");
    let id_token = tokens["id_token"].as_str().expect("an id_token");
    let claims = id_token.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["nonce"], "n-42");
    assert_eq!(claims["aud"], "csap-test");
    assert_eq!(claims["iss"], provider.issuer.as_str());
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 120, "ttl.IdToken is what the test asked for");

    // A wrong verifier is refused by the provider itself (PKCE is enforced).
    let back = browser_login(&auth, "alice").unwrap();
    let wrong = "an-entirely-different-verifier-of-enough-length-000";
    let (refused, _) = exchange(code_in(&back).unwrap(), wrong);
    assert_eq!(refused, 400);
}
