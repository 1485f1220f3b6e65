// Owns: the OpenID provider test peers for Flotilla's SSO tests, built on the
// certified `oidc-provider` (v9, Node 22) and `jose` packages pinned in package.json.
//
// One script, two modes (see tests/peers/README.md for the full contract):
//   --mode central  the company IdP (like Dex in front of GitHub): authorization
//                   code + PKCE S256, refresh tokens with rotation, JWKS, ID tokens
//                   with sub/preferred_username/email/name, Dex cross-client scopes
//                   `audience:server:client_id:<aud>` (added to the ID token `aud`),
//                   and a headless-drivable login at /interaction/:uid.
//   --mode cluster  a cluster's Dex doing RFC 8693 token exchange exactly like Dex's
//                   token endpoint (connector_id, Basic client auth, Dex-shaped JSON).
// Binds 127.0.0.1 only; `--port 0` picks a free port. When listening it prints one
// line `READY http://127.0.0.1:<port>` (the issuer) on stdout. Logs go to stderr and
// never contain full tokens. Test hooks: GET /test/stats, POST /test/reset.

import { createServer } from 'node:http';
import { randomBytes, randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';
import {
  SignJWT,
  createRemoteJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  exportJWK,
  generateKeyPair,
  jwtVerify,
} from 'jose';

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const TT_ID = 'urn:ietf:params:oauth:token-type:id_token';
const TT_ACCESS = 'urn:ietf:params:oauth:token-type:access_token';
const CROSS_CLIENT = 'audience:server:client_id:';
const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]']);

// ---------------------------------------------------------------- arguments

const USAGE = `usage:
  node oidc_provider.mjs --port N --mode central [--client id:secret:redirect_uri[,redirect_uri...]]...
      [--id-token-ttl SECONDS] [--access-token-ttl SECONDS] [--groups user=group[,group...]]...
  node oidc_provider.mjs --port N --mode cluster --central-issuer URL [--client id:secret]...
      [--audience AUD] [--token-ttl SECONDS] [--claimed-ttl SECONDS] [--connector ID]
      [--subject-audience AUD]`;

function fail(message) {
  process.stderr.write(`oidc_provider: ${message}\n${USAGE}\n`);
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      port: { type: 'string' },
      mode: { type: 'string' },
      client: { type: 'string', multiple: true, default: [] },
      'id-token-ttl': { type: 'string', default: '3600' },
      'access-token-ttl': { type: 'string', default: '3600' },
      groups: { type: 'string', multiple: true, default: [] },
      'central-issuer': { type: 'string' },
      audience: { type: 'string' },
      'token-ttl': { type: 'string', default: '3600' },
      'claimed-ttl': { type: 'string' },
      connector: { type: 'string', default: 'central' },
      'subject-audience': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  }));
} catch (err) {
  fail(err.message);
}
if (args.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}

function seconds(name) {
  const value = args[name];
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value) || Number(value) <= 0) fail(`--${name} must be a positive integer`);
  return Number(value);
}

if (args.port === undefined || !/^\d+$/.test(args.port)) fail('--port N is required');
const MODE = args.mode;
if (MODE !== 'central' && MODE !== 'cluster') fail('--mode must be central or cluster');
if (MODE === 'cluster' && !args['central-issuer']) fail('--central-issuer URL is required in cluster mode');
const modeOptions = {
  central: ['id-token-ttl', 'access-token-ttl', 'groups'],
  cluster: ['central-issuer', 'audience', 'token-ttl', 'claimed-ttl', 'connector', 'subject-audience'],
};
for (const name of modeOptions[MODE === 'central' ? 'cluster' : 'central']) {
  if (process.argv.includes(`--${name}`) || process.argv.some((a) => a.startsWith(`--${name}=`))) {
    fail(`--${name} is not a ${MODE} mode option`);
  }
}

// --groups user=g1,g2: the `groups` claim of that user's ID tokens.
const GROUPS = new Map(
  args.groups.map((spec) => {
    const [user, list] = spec.split('=');
    if (!user || list === undefined) fail(`--groups ${spec}: expected user=group[,group...]`);
    return [user, list.split(',').filter(Boolean)];
  }),
);

const log = (message) => process.stderr.write(`${new Date().toISOString()} [oidc-${MODE}] ${message}\n`);

// Short, non-secret fingerprint of a token for logs.
const fp = (token) => (typeof token === 'string' && token.length > 12 ? `${token.slice(0, 6)}…(${token.length})` : '<none>');

// ---------------------------------------------------------------- helpers

function isLoopbackHttp(uri) {
  const parsed = URL.parse(uri);
  return parsed !== null && parsed.protocol === 'http:' && LOOPBACK_HOSTS.has(parsed.hostname);
}

// `http://127.0.0.1:<any port>/path` matches a registered loopback redirect URI
// regardless of port (RFC 8252 §7.3), for every client type.
function sameIgnoringLoopbackPort(actual, registered) {
  if (!isLoopbackHttp(actual) || !isLoopbackHttp(registered)) return false;
  const a = new URL(actual);
  const r = new URL(registered);
  a.port = '';
  r.port = '';
  return a.href === r.href;
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

const isCrossClientScope = (scope) => scope.startsWith(CROSS_CLIENT) && scope.length > CROSS_CLIENT.length;

function bump(map, key) {
  map[key] = (map[key] ?? 0) + 1;
}

const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

// ---------------------------------------------------------------- signing key

const KID = `flotilla-${MODE}-${randomBytes(6).toString('hex')}`;
const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const privateJwk = { ...(await exportJWK(privateKey)), kid: KID, alg: 'RS256', use: 'sig' };

// ---------------------------------------------------------------- listen first (issuer needs the port)

const server = createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number(args.port), '127.0.0.1', resolve);
});
const PORT = server.address().port;
const ISSUER = `http://127.0.0.1:${PORT}`;

// ---------------------------------------------------------------- provider config

const baseConfig = {
  jwks: { keys: [privateJwk] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    introspection: { enabled: false },
  },
  enabledJWA: { idTokenSigningAlgValues: ['RS256'] },
  pkce: { required: () => true },
  renderError(ctx, out) {
    ctx.type = 'json';
    ctx.body = out;
  },
};

const stats = MODE === 'central'
  ? { authorizations: {}, logins: {}, code_grants: {}, refresh_grants: {}, token_errors: {} }
  : { exchanges: {}, exchanges_total: 0, rejected_total: 0, rejected: {} };

function resetStats() {
  for (const [key, value] of Object.entries(stats)) {
    stats[key] = typeof value === 'number' ? 0 : {};
  }
}

// Request log and test hooks, installed first so they see every request.
function installCommon(p) {
  // Request log (method, path, status; never query strings or bodies).
  p.use(async (ctx, next) => {
    const started = Date.now();
    try {
      await next();
    } finally {
      log(`${ctx.method} ${ctx.path} -> ${ctx.status} (${Date.now() - started} ms)`);
    }
  });
  p.use(async (ctx, next) => {
    if (ctx.path === '/test/stats' && ctx.method === 'GET') {
      ctx.type = 'json';
      ctx.body = stats;
      return undefined;
    }
    if (ctx.path === '/test/reset' && ctx.method === 'POST') {
      resetStats();
      ctx.status = 204;
      return undefined;
    }
    return next();
  });
}

let provider;
if (MODE === 'central') {
  provider = buildCentral();
} else {
  provider = buildCluster();
}

provider.on('server_error', (ctx, err) => log(`server_error on ${ctx.path}: ${err.stack || err}`));

server.on('request', provider.callback());
process.stdout.write(`READY ${ISSUER}\n`);
log(`listening; issuer ${ISSUER}; kid ${KID}`);

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    log(`${signal}; exiting`);
    server.close();
    process.exit(0);
  });
}

// ================================================================ central mode

function buildCentral() {
  const idTokenTtl = seconds('id-token-ttl');
  const accessTokenTtl = seconds('access-token-ttl');

  const clients = args.client.map((spec) => {
    const first = spec.indexOf(':');
    const second = first < 0 ? -1 : spec.indexOf(':', first + 1);
    if (first <= 0 || second < 0) fail(`--client ${spec}: expected id:secret:redirect_uri[,redirect_uri...]`);
    const id = spec.slice(0, first);
    const secret = spec.slice(first + 1, second);
    const redirects = spec.slice(second + 1).split(',').filter(Boolean);
    if (redirects.length === 0) fail(`--client ${id}: at least one redirect_uri is required`);
    for (const uri of redirects) {
      if (!URL.parse(uri)) fail(`--client ${id}: invalid redirect_uri ${uri}`);
    }
    // Public clients whose redirect URIs are all loopback/custom-scheme are
    // native apps; everything else is a web client.
    const native = secret === '' && redirects.every((u) => isLoopbackHttp(u) || !/^https?:/.test(u));
    return {
      client_id: id,
      ...(secret === '' ? { token_endpoint_auth_method: 'none' } : {
        client_secret: secret,
        token_endpoint_auth_method: 'client_secret_basic',
      }),
      application_type: native ? 'native' : 'web',
      redirect_uris: redirects,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
    };
  });
  if (clients.length === 0) log('warning: no --client given; nobody can log in');

  const p = new Provider(ISSUER, {
    ...baseConfig,
    clients,
    scopes: ['openid', 'profile', 'email', 'offline_access'],
    responseTypes: ['code'],
    claims: {
      openid: ['sub'],
      // `groups` rides with profile (as Dex puts it in ID tokens when asked).
      profile: ['name', 'preferred_username', 'groups'],
      email: ['email', 'email_verified'],
    },
    // ID tokens carry the scope's claims even when an access token is issued too.
    conformIdTokenClaims: false,
    // Any username typed at login is an account; its sub is the username.
    async findAccount(_ctx, sub) {
      return {
        accountId: sub,
        async claims() {
          return {
            sub,
            preferred_username: sub,
            name: sub.charAt(0).toUpperCase() + sub.slice(1),
            email: `${sub}@example.com`,
            email_verified: true,
            ...(GROUPS.has(sub) && { groups: GROUPS.get(sub) }),
          };
        },
      };
    },
    async issueRefreshToken(_ctx, client, code) {
      return client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access');
    },
    rotateRefreshToken: true,
    // Tokens outlive the browser session (the session cookie is thrown away).
    expiresWithSession: async () => false,
    ttl: {
      IdToken: idTokenTtl,
      AccessToken: accessTokenTtl,
      AuthorizationCode: 120,
      RefreshToken: 14 * 24 * 3600,
      Interaction: 600,
      Session: 3600,
      Grant: 14 * 24 * 3600,
    },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  });
  installCommon(p);

  // Loopback redirect URIs match on any port (see sameIgnoringLoopbackPort).
  const { redirectUriAllowed } = p.Client.prototype;
  p.Client.prototype.redirectUriAllowed = function allowed(value) {
    return redirectUriAllowed.call(this, value)
      || this.redirectUris.some((registered) => sameIgnoringLoopbackPort(value, registered));
  };

  // oidc-provider silently drops requested scopes that are not in `scopes`
  // (requestParamOIDCScopes filters by it). Dex cross-client scopes are open
  // ended, so they are let through here; the login grants them like any scope.
  const oidcScopes = Object.getOwnPropertyDescriptor(p.OIDCContext.prototype, 'requestParamOIDCScopes');
  Object.defineProperty(p.OIDCContext.prototype, 'requestParamOIDCScopes', {
    configurable: true,
    get() {
      const known = oidcScopes.get.call(this);
      for (const scope of this.requestParamScopes) {
        if (isCrossClientScope(scope)) known.add(scope);
      }
      return known;
    },
  });

  // Dex cross-client scopes: `audience:server:client_id:<aud>` puts <aud> into the
  // ID token's `aud` next to the client id, and the client becomes `azp`.
  // oidc-provider always signs ID tokens with aud = client_id, so the token is
  // re-signed here with the same key and kid.
  const { issue } = p.IdToken.prototype;
  p.IdToken.prototype.issue = async function issueWithAudiences(options = {}) {
    const jwt = await issue.call(this, options);
    if (options.use !== 'idtoken') return jwt;
    const extra = crossClientAudiences(this.ctx);
    if (extra.length === 0) return jwt;
    const payload = decodeJwt(jwt);
    const clientId = this.client.clientId;
    payload.aud = [clientId, ...extra.filter((a) => a !== clientId)];
    payload.azp = clientId;
    return new SignJWT(payload).setProtectedHeader(decodeProtectedHeader(jwt)).sign(privateKey);
  };

  function crossClientAudiences(ctx) {
    const oidc = ctx?.oidc;
    if (!oidc) return [];
    const { entities = {}, params = {} } = oidc;
    let scope;
    if (params.grant_type === 'refresh_token' && params.scope) scope = params.scope;
    else scope = entities.AuthorizationCode?.scope ?? entities.RefreshToken?.scope ?? params.scope;
    return [...new Set(String(scope ?? '').split(' ')
      .filter(isCrossClientScope)
      .map((s) => s.slice(CROSS_CLIENT.length)))];
  }

  // OpenID Connect drops offline_access unless prompt includes consent (Core
  // §11); Dex does not, and neither do its clients. Add prompt=consent to
  // authorization requests so refresh tokens are issued like Dex does (our
  // login grants consent anyway).
  p.use(async (ctx, next) => {
    if (ctx.path === '/auth' && ctx.method === 'GET') {
      const query = { ...ctx.query };
      const requested = String(query.scope ?? '').split(' ');
      const prompts = String(query.prompt ?? '').split(' ').filter(Boolean);
      if (requested.includes('offline_access') && !prompts.includes('consent') && !prompts.includes('none')) {
        query.prompt = [...prompts, 'consent'].join(' ');
        ctx.query = query;
      }
    }
    await next();
  });

  // Headless-drivable login + consent.
  p.use(async (ctx, next) => {
    const match = /^\/interaction\/([A-Za-z0-9_-]+)(\/login)?$/.exec(ctx.path);
    if (!match) return next();
    const [, uid, login] = match;
    ctx.set('Cache-Control', 'no-store');
    let details;
    try {
      details = await p.interactionDetails(ctx.req, ctx.res);
    } catch (err) {
      ctx.status = 400;
      ctx.type = 'json';
      ctx.body = { error: 'invalid_request', error_description: `interaction: ${err.message}` };
      return undefined;
    }
    if (details.uid !== uid) {
      ctx.status = 400;
      ctx.type = 'json';
      ctx.body = { error: 'invalid_request', error_description: 'interaction uid mismatch' };
      return undefined;
    }

    if (!login && ctx.method === 'GET') {
      ctx.type = 'html';
      ctx.body = `<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>\n`
        + `<p>Sign in to ${escapeHtml(details.params.client_id)} (prompt: ${escapeHtml(details.prompt.name)})</p>\n`
        + `<form method=post action="/interaction/${uid}/login"><input name=login autofocus>`
        + `<button type=submit>Sign in</button></form>\n</body></html>\n`;
      return undefined;
    }
    if (!login || ctx.method !== 'POST') {
      ctx.status = 405;
      return undefined;
    }

    const form = await readForm(ctx.req);
    const username = (form.get('login') ?? '').trim();
    if (!username) {
      ctx.status = 400;
      ctx.type = 'json';
      ctx.body = { error: 'invalid_request', error_description: 'login is required' };
      return undefined;
    }
    const accountId = details.session?.accountId && details.prompt.name !== 'login'
      ? details.session.accountId
      : username;

    const { params, prompt } = details;
    const grant = details.grantId
      ? await p.Grant.find(details.grantId)
      : new p.Grant({ accountId, clientId: params.client_id });
    // Grant everything that was asked for (including offline_access and Dex
    // cross-client scopes), plus any claims the consent prompt reports missing.
    if (params.scope) grant.addOIDCScope(params.scope);
    const missingClaims = prompt.details?.missingOIDCClaims;
    if (Array.isArray(missingClaims) && missingClaims.length) grant.addOIDCClaims(missingClaims);
    for (const [indicator, scopes] of Object.entries(prompt.details?.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();

    bump(stats.logins, accountId);
    log(`login ${accountId} for client ${params.client_id}`);
    const returnTo = await p.interactionResult(ctx.req, ctx.res, {
      login: { accountId },
      consent: { grantId },
    }, { mergeWithLastSubmission: false });
    ctx.status = 303;
    ctx.redirect(returnTo);
    return undefined;
  });

  p.on('authorization.success', (ctx) => {
    const sub = ctx.oidc?.session?.accountId;
    if (sub) bump(stats.authorizations, sub);
  });
  p.on('grant.success', (ctx) => {
    const sub = ctx.oidc?.entities?.Account?.accountId ?? '?';
    const gt = ctx.oidc?.params?.grant_type;
    if (gt === 'authorization_code') bump(stats.code_grants, sub);
    else if (gt === 'refresh_token') bump(stats.refresh_grants, sub);
    log(`grant ${gt} ok for ${sub} (client ${ctx.oidc?.client?.clientId})`);
  });
  p.on('grant.error', (ctx, err) => {
    bump(stats.token_errors, err.error ?? 'error');
    log(`grant ${ctx.oidc?.params?.grant_type} failed: ${err.error} ${err.error_description ?? ''}`);
  });
  p.on('authorization.error', (_ctx, err) => log(`authorization failed: ${err.error} ${err.error_description ?? ''}`));

  return p;
}

// ================================================================ cluster mode

function buildCluster() {
  const tokenTtl = seconds('token-ttl');
  const claimedTtl = seconds('claimed-ttl');
  const connectorId = args.connector;
  const subjectAudience = args['subject-audience'];
  const centralIssuer = args['central-issuer'].replace(/\/+$/, '');

  const clients = args.client.map((spec) => {
    const i = spec.indexOf(':');
    if (i <= 0 || i === spec.length - 1) fail(`--client ${spec}: expected id:secret (secret required)`);
    return {
      client_id: spec.slice(0, i),
      client_secret: spec.slice(i + 1),
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: [TOKEN_EXCHANGE],
      response_types: [],
      redirect_uris: [],
    };
  });
  if (clients.length === 0) log('warning: no --client given; nobody can exchange');

  const p = new Provider(ISSUER, {
    ...baseConfig,
    clients,
    scopes: ['openid', 'profile', 'email', 'offline_access', 'groups'],
    responseTypes: ['code'],
    async findAccount(_ctx, sub) {
      return { accountId: sub, async claims() { return { sub }; } };
    },
  });
  installCommon(p);

  // The central issuer's discovery document and JWKS, fetched lazily (and again
  // after a failure), so start order does not matter.
  let central;
  async function centralMetadata() {
    if (central) return central;
    const res = await fetch(`${centralIssuer}/.well-known/openid-configuration`);
    if (!res.ok) throw new Error(`central discovery: HTTP ${res.status}`);
    const doc = await res.json();
    if (doc.issuer !== centralIssuer) throw new Error(`central discovery: issuer ${doc.issuer} != ${centralIssuer}`);
    central = {
      doc,
      jwks: createRemoteJWKSet(new URL(doc.jwks_uri), { cooldownDuration: 500, cacheMaxAge: 60_000 }),
    };
    return central;
  }

  // Verifies the subject token like Dex's OIDC connector: ID tokens (and JWT
  // access tokens) by signature + issuer + expiry; opaque access tokens at the
  // central userinfo endpoint. Returns the claims.
  async function verifySubject(token, type) {
    const { doc, jwks } = await centralMetadata();
    if (type === TT_ID || token.split('.').length === 3) {
      const { payload } = await jwtVerify(token, jwks, {
        issuer: centralIssuer,
        audience: subjectAudience,
        algorithms: ['RS256', 'PS256', 'ES256'],
        requiredClaims: ['sub', 'exp'],
      });
      return payload;
    }
    if (!doc.userinfo_endpoint) throw new Error('central has no userinfo endpoint');
    const res = await fetch(doc.userinfo_endpoint, { headers: { authorization: `Bearer ${token}` } });
    if (!res.ok) throw new Error(`userinfo: HTTP ${res.status}`);
    return res.json();
  }

  const oauthError = (ctx, status, error, description) => {
    ctx.status = status;
    ctx.type = 'json';
    ctx.body = { error, error_description: description };
    ctx.state.exchangeError = error;
  };

  p.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
    const { params, client } = ctx.oidc;
    const subjectToken = params.subject_token;
    const subjectTokenType = params.subject_token_type;
    const requestedTokenType = params.requested_token_type || TT_ACCESS;

    if (subjectTokenType !== TT_ID && subjectTokenType !== TT_ACCESS) {
      return oauthError(ctx, 400, 'request_not_supported', 'Invalid subject_token_type.');
    }
    if (!subjectToken) {
      return oauthError(ctx, 400, 'invalid_request', 'Missing subject_token');
    }
    if (params.connector_id !== connectorId) {
      log(`exchange by ${client.clientId}: unknown connector ${JSON.stringify(params.connector_id ?? null)}`);
      return oauthError(ctx, 400, 'invalid_request', 'Requested connector does not exist.');
    }
    let claims;
    try {
      claims = await verifySubject(subjectToken, subjectTokenType);
    } catch (err) {
      log(`exchange by ${client.clientId}: subject token ${fp(subjectToken)} rejected: ${err.code ?? ''} ${err.message}`);
      return oauthError(ctx, 401, 'access_denied', 'Subject token verification failed.');
    }
    if (typeof claims.sub !== 'string' || !claims.sub) {
      return oauthError(ctx, 401, 'access_denied', 'Subject token has no sub claim.');
    }
    if (requestedTokenType !== TT_ACCESS && requestedTokenType !== TT_ID) {
      return oauthError(ctx, 400, 'request_not_supported', 'Invalid requested_token_type.');
    }

    const now = Math.floor(Date.now() / 1000);
    const minted = {
      sub: claims.sub,
      azp: client.clientId,
      scope: params.scope || 'openid',
      jti: randomUUID(),
    };
    for (const claim of ['email', 'email_verified', 'preferred_username', 'name']) {
      if (claims[claim] !== undefined) minted[claim] = claims[claim];
    }
    const token = await new SignJWT(minted)
      .setProtectedHeader({ alg: 'RS256', kid: KID, typ: 'JWT' })
      .setIssuer(ISSUER)
      .setAudience(args.audience ?? client.clientId)
      .setIssuedAt(now)
      .setExpirationTime(now + tokenTtl)
      .sign(privateKey);

    bump(stats.exchanges, `${claims.sub}|${client.clientId}`);
    log(`exchange by ${client.clientId} for ${claims.sub}: issued ${fp(token)} (exp in ${tokenTtl}s, claimed ${claimedTtl ?? tokenTtl}s)`);
    ctx.status = 200;
    ctx.type = 'json';
    ctx.body = {
      access_token: token,
      issued_token_type: requestedTokenType,
      token_type: 'bearer',
      expires_in: claimedTtl ?? tokenTtl,
    };
    return undefined;
  }, ['subject_token', 'subject_token_type', 'requested_token_type', 'connector_id', 'scope', 'audience']);

  // Count every token-exchange request, including ones refused before the
  // grant handler runs (client authentication, unsupported parameters).
  p.use(async (ctx, next) => {
    if (ctx.path !== '/token' || ctx.method !== 'POST') return next();
    await next();
    if (ctx.oidc?.params?.grant_type !== TOKEN_EXCHANGE) return undefined;
    stats.exchanges_total += 1;
    if (ctx.status >= 400) {
      stats.rejected_total += 1;
      const error = ctx.state.exchangeError ?? ctx.body?.error ?? `http_${ctx.status}`;
      bump(stats.rejected, error);
      if (!ctx.state.exchangeError) log(`exchange refused: ${ctx.status} ${error} ${ctx.body?.error_description ?? ''}`);
    }
    return undefined;
  });

  return p;
}

