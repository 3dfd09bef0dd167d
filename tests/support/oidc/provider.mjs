// A real OpenID provider for the tests: npm `oidc-provider` (OpenID Certified),
// issuing JWT access tokens by the client credentials grant with resource
// indicators (RFC 8707), so that `aud` is the resource the token is for.
// Needs Node 22 or later (tests/support/oidc.rs runs it on the Node 22 that
// scripts/test.sh installs for the conformance suite).
//
// Environment:
//   PORT              listen on 127.0.0.1:PORT; the issuer is http://127.0.0.1:PORT
//   KEYS_FILE         JSON file with the private JWKS ({"keys": [...]}); created with one
//                     new RSA 2048 key when missing. The first key signs; all are published.
//   ROTATE=1          put a NEW key first in KEYS_FILE (the signing key), keeping the old
//                     ones after it (still published, so their tokens still validate)
//   ACCESS_TOKEN_TTL  access token lifetime in seconds (default 300)
//   NODE_DEPS         a folder whose node_modules has oidc-provider (scripts/test.sh
//                     installs it under target/test-deps); default: resolved from here
//   OPAQUE=1          access tokens for resources are opaque (not JWTs): a resource
//                     server learns what they are by introspection (RFC 7662)
//
// Clients (confidential, client_secret_basic or _post):
//   vmcp-test / vmcp-test-secret, other-client / other-secret (client_credentials);
//   vmcp-gateway / vmcp-gateway-secret (client_credentials and token exchange:
//   vmcp's own identity toward backends).
// Token exchange (RFC 8693, a grant registered on the provider): a subject_token
// that is an access token this provider signed and that has not expired becomes
// a JWT for the requested `resource` with the same `sub`, `act: {sub: <client>}`.
// Any http(s) resource on 127.0.0.1 or localhost is a resource server with the
// scopes `mcp:tools mcp:admin`; a token request must name one with `resource=`.
// Introspection (RFC 7662) and revocation (RFC 7009) are on: any confidential
// client may introspect or revoke a token, at the endpoints the discovery
// document names.
// Prints `ready <issuer>` on stdout once listening.

import { createPrivateKey, createPublicKey, generateKeyPairSync, randomUUID, sign, verify } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const port = Number(process.env.PORT);
if (!Number.isInteger(port) || port <= 0) {
  throw new Error('PORT must be a port number');
}
const keysFile = process.env.KEYS_FILE;
if (!keysFile) {
  throw new Error('KEYS_FILE must name the JWKS file');
}
const ttl = Number(process.env.ACCESS_TOKEN_TTL ?? 300);
if (!Number.isInteger(ttl) || ttl <= 0) {
  throw new Error('ACCESS_TOKEN_TTL must be a positive number of seconds');
}
const SCOPES = 'mcp:tools mcp:admin';
const opaque = process.env.OPAQUE === '1';

const deps = process.env.NODE_DEPS;
const entry = deps
  ? pathToFileURL(createRequire(join(deps, 'package.json')).resolve('oidc-provider')).href
  : 'oidc-provider';
const { default: Provider, errors } = await import(entry);

function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };
}

function loadKeys() {
  let keys = existsSync(keysFile) ? JSON.parse(readFileSync(keysFile, 'utf8')).keys : [];
  if (keys.length === 0 || process.env.ROTATE === '1') {
    keys = [newKey(), ...keys];
    // Written whole, then renamed: a reader never sees half a file.
    writeFileSync(`${keysFile}.tmp`, JSON.stringify({ keys }, null, 2));
    renameSync(`${keysFile}.tmp`, keysFile);
  }
  return { keys };
}

function isLocal(resource) {
  const url = URL.parse(resource);
  return (
    url !== null
    && (url.protocol === 'http:' || url.protocol === 'https:')
    && (url.hostname === '127.0.0.1' || url.hostname === 'localhost')
  );
}

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

const client = (clientId, secret, grants = ['client_credentials']) => ({
  client_id: clientId,
  client_secret: secret,
  grant_types: grants,
  redirect_uris: [],
  response_types: [],
  scope: SCOPES,
});

const issuer = `http://127.0.0.1:${port}`;
const jwks = loadKeys();
const provider = new Provider(issuer, {
  clients: [
    client('vmcp-test', 'vmcp-test-secret'),
    client('other-client', 'other-secret'),
    client('vmcp-gateway', 'vmcp-gateway-secret', ['client_credentials', TOKEN_EXCHANGE]),
  ],
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  jwks,
  scopes: ['openid', ...SCOPES.split(' ')],
  // No end-user flows here: no cookies are set, but the keys silence the
  // "cookies.keys" notice and keep a restart's configuration the same.
  cookies: { keys: ['vmcp-test-cookie-key'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // defaultResource is left as is (none): a token request without
      // `resource` gets an opaque token with no audience.
      getResourceServerInfo(_ctx, resource) {
        if (!isLocal(resource)) {
          throw new errors.InvalidTarget('only resources on 127.0.0.1 or localhost');
        }
        return {
          scope: SCOPES,
          audience: resource,
          accessTokenTTL: ttl,
          ...(opaque ? { accessTokenFormat: 'opaque' } : { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } }),
        };
      },
    },
  },
  ttl: { ClientCredentials: ttl },
});

// RFC 8693 token exchange, as a grant registered on the provider: the
// subject token is verified against this provider's keys, and the new token
// is signed with its current key.
const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
const publicKeys = new Map(jwks.keys.map((k) => [k.kid, createPublicKey(createPrivateKey({ key: k, format: 'jwk' }))]));

function verifySubjectToken(token) {
  const parts = String(token).split('.');
  if (parts.length !== 3) return null;
  try {
    const header = JSON.parse(Buffer.from(parts[0], 'base64url'));
    const key = publicKeys.get(header.kid);
    const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
    if (header.alg !== 'RS256' || !key || !verify('sha256', signed, key, Buffer.from(parts[2], 'base64url'))) {
      return null;
    }
    const claims = JSON.parse(Buffer.from(parts[1], 'base64url'));
    return claims.iss === issuer && claims.exp > Date.now() / 1000 ? claims : null;
  } catch {
    return null;
  }
}

provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
  const { params, client: actor } = ctx.oidc;
  if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('subject_token_type must be an access token');
  }
  const subject = verifySubjectToken(params.subject_token);
  if (!subject) {
    throw new errors.InvalidGrant('subject_token is not a valid access token of this issuer');
  }
  const resource = params.resource;
  if (!resource || !isLocal(resource)) {
    throw new errors.InvalidTarget('resource must name a resource on 127.0.0.1 or localhost');
  }
  const now = Math.floor(Date.now() / 1000);
  const signer = jwks.keys[0];
  const claims = {
    iss: issuer, sub: subject.sub, aud: resource, client_id: actor.clientId,
    act: { sub: actor.clientId }, iat: now, exp: now + ttl, jti: randomUUID(),
  };
  if (params.scope) claims.scope = params.scope;
  const input = `${b64({ alg: 'RS256', typ: 'at+jwt', kid: signer.kid })}.${b64(claims)}`;
  const signature = sign('sha256', Buffer.from(input), createPrivateKey({ key: signer, format: 'jwk' }));
  ctx.body = {
    access_token: `${input}.${signature.toString('base64url')}`,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: 'Bearer',
    expires_in: ttl,
  };
}, ['subject_token', 'subject_token_type', 'requested_token_type', 'resource', 'audience', 'scope']);

provider.on('server_error', (_ctx, err) => {
  console.error('oidc-provider server_error:', err);
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
server.on('error', (err) => {
  console.error(`listen on 127.0.0.1:${port}: ${err.message}`);
  process.exit(1);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
