//! The test provider is the real thing: a code flow with PKCE through oidc-provider's own
//! login and consent pages yields a signed ID token for the login name, the nonce, the client
//! and the configured lifetime. This pins the fixture the key server's ID-token verification
//! will be tested against (issue 18, part 3: not built yet).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use csap_testkit::oidc::{browser_login, oidc_provider, OidcClient};
use sha2::{Digest, Sha256};

/// The authorization code in the provider's redirect back to the client.
fn code_in(redirect: &str) -> &str {
    redirect
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("code="))
        .expect("a code in the redirect")
}

/// Trades `code` at the provider's token endpoint, proving possession with `verifier` (PKCE).
fn exchange(
    runtime: &tokio::runtime::Runtime,
    issuer: &str,
    code: &str,
    redirect: &str,
    verifier: &str,
) -> reqwest::Response {
    runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("{issuer}/token"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("client_id", "csap-test"),
                ("redirect_uri", redirect),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .expect("the token endpoint answers")
    })
}

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
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier));
    let auth = format!(
        "{}/auth?client_id=csap-test&response_type=code&scope=openid&redirect_uri={redirect}\
         &code_challenge={challenge}&code_challenge_method=S256&nonce=n-42&state=s-7",
        provider.issuer
    );
    let back = browser_login(&auth, "alice").expect("walk the provider's pages");
    assert!(back.starts_with(&redirect), "redirected to {back}");
    assert!(back.contains("state=s-7"), "{back}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answer = exchange(
        &runtime,
        &provider.issuer,
        code_in(&back),
        &redirect,
        verifier,
    );
    let tokens: serde_json::Value = runtime.block_on(answer.json()).unwrap();
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
    let refused = exchange(&runtime, &provider.issuer, code_in(&back), &redirect, wrong).status();
    assert_eq!(refused, 400);
}
