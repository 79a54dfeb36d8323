// A real OpenID Provider for the console's SSO tests: the certified `oidc-provider` package on loopback.
//
// Usage: node provider.mjs PORT REDIRECT_URI   (the client secret comes from $OIDC_CLIENT_SECRET)
// Prints `oidc-provider listening on http://127.0.0.1:PORT` once it serves. Plain http on loopback
// only, with the package's development login and consent pages (any password is taken: the test
// users are who they say they are). Client `gateway-console`: authorization code, PKCE required,
// client_secret_basic. Users: `ada` (groups: reviewers), `bob` (groups: staff, not mapped).
import http from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';

const [port, redirectUri] = process.argv.slice(2);
const secret = process.env.OIDC_CLIENT_SECRET;
if (!port || !redirectUri || !secret) {
  console.error('usage: OIDC_CLIENT_SECRET=... node provider.mjs PORT REDIRECT_URI');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

const USERS = {
  ada: { preferred_username: 'ada', name: 'Ada Reviewer', groups: ['reviewers', 'staff'] },
  bob: { preferred_username: 'bob', name: 'Bob Outsider', groups: ['staff'] },
};

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', use: 'sig', alg: 'RS256' };

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'gateway-console',
    client_secret: secret,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  jwks: { keys: [jwk] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  claims: { openid: ['sub'], profile: ['preferred_username', 'name'], groups: ['groups'] },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    const user = USERS[id];
    if (!user) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...user }; } };
  },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

const server = http.createServer(provider.callback());
server.listen(Number(port), '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
