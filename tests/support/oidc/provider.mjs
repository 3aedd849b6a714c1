// A real OpenID Connect provider for csap's delegated-authentication tests.
//
// Usage: node provider.mjs CONFIG.json
// CONFIG: { "port": 0, "clients": [{ "client_id", "redirect_uris": [...] }], "id_token_ttl": 3600 }
//
// It listens on 127.0.0.1 only and prints one line `listening ISSUER` on stdout once ready, so
// the test kit learns the port. It is plain HTTP on loopback: production providers must be HTTPS
// and the key server refuses http issuers unless its loopback test switch is on.
//
// devInteractions are oidc-provider's own login and consent pages (they accept any login
// name); the tests post those forms as a browser would, so the whole code flow is the real one.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));

const server = createServer();
server.listen(config.port ?? 0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: config.clients.map((c) => ({
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'urn:ietf:params:oauth:grant-type:device_code'],
      response_types: ['code'],
      ...c,
    })),
    // Any login name is an account whose `sub` is that name.
    findAccount: (_ctx, sub) => ({ accountId: sub, claims: () => ({ sub }) }),
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: true },
      deviceFlow: { enabled: true },
    },
    ttl: { IdToken: config.id_token_ttl ?? 3600 },
    // Fixed cookie keys are fine for a throwaway test provider.
    cookies: { keys: ['csap-test-oidc-provider'] },
  });
  // Loopback HTTP redirect URIs for native clients (RFC 8252 §7.3) are allowed by default.
  server.on('request', provider.callback());
  process.stdout.write(`listening ${issuer}\n`);
});
