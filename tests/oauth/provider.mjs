// A real OpenID provider (oidc-provider) for the OAuth tests, on 127.0.0.1.
//
//   node provider.mjs <resource-url> <other-resource-url>
//
// Prints one JSON line when it listens: {"issuer", "kid"}. Reads commands on
// stdin, one a line, and answers each with one JSON line:
//   rotate   a new signing key signs from now on; the JWKS publishes it
//            first and keeps the old one (tokens already issued stay valid)
// It exits when stdin closes, so a test that dies cannot leave it behind.
//
// Clients (secret = id + "-secret"):
//   mcp-client   client credentials; JWT access tokens for either resource
//   mcp-opaque   client credentials; opaque access tokens (for introspection)
//   mcp-server   the resource server itself, to call the introspection endpoint
//   mcp-public   a public client (no secret): authorization code with PKCE,
//                redirect http://127.0.0.1/callback; the dev login form
//                accepts any name, which becomes the token's subject;
//                refresh tokens too
// Dynamic client registration (RFC 7591) is open, for SDK clients that register.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import { createInterface } from 'node:readline';

import Provider from 'oidc-provider';

const [resource, otherResource] = process.argv.slice(2);
if (!resource || !otherResource) {
  process.stderr.write('usage: provider.mjs <resource-url> <other-resource-url>\n');
  process.exit(2);
}
const SCOPES = 'files:read files:write mcp';

function signingKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };
}

function client(id, extra = {}) {
  return {
    client_id: id,
    client_secret: `${id}-secret`,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    ...extra,
  };
}

function configuration(keys) {
  return {
    clients: [
      client('mcp-client'),
      client('mcp-opaque'),
      client('mcp-server', { grant_types: [] }),
      {
        client_id: 'mcp-public',
        application_type: 'native',
        token_endpoint_auth_method: 'none',
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        redirect_uris: ['http://127.0.0.1/callback'],
      },
    ],
    jwks: { keys },
    // The scopes of the resources too, so that clients may register for them (RFC 7591 "scope").
    scopes: ['openid', 'offline_access', ...SCOPES.split(' ')],
    ttl: { ClientCredentials: 300 },
    // Refresh tokens for every client allowed the grant (not only with
    // offline_access and a consent prompt): the client tests refresh them.
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    features: {
      devInteractions: { enabled: true },
      registration: { enabled: true },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => resource,
        useGrantedResource: () => true,
        getResourceServerInfo(ctx, indicator, requester) {
          if (indicator !== resource && indicator !== otherResource) {
            throw new Provider.errors.InvalidTarget();
          }
          const opaque = requester.clientId === 'mcp-opaque';
          return {
            scope: SCOPES,
            accessTokenTTL: 300,
            accessTokenFormat: opaque ? 'opaque' : 'jwt',
            ...(opaque ? {} : { jwt: { sign: { alg: 'RS256' } } }),
          };
        },
      },
    },
  };
}

const server = createServer();
await new Promise((resolve) => { server.listen(0, '127.0.0.1', resolve); });
const issuer = `http://127.0.0.1:${server.address().port}`;

let keys = [signingKey()];
let handler = new Provider(issuer, configuration(keys)).callback();
server.on('request', (req, res) => handler(req, res));

function say(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

say({ issuer, kid: keys[0].kid });

const commands = createInterface({ input: process.stdin });
commands.on('line', (line) => {
  if (line.trim() === 'rotate') {
    // A new instance with the new key first: it signs with the first key for
    // the algorithm. The token store is the adapter's, shared by instances.
    keys = [signingKey(), keys[0]];
    handler = new Provider(issuer, configuration(keys)).callback();
    say({ rotated: keys[0].kid });
  } else {
    say({ error: `unknown command: ${line.trim()}` });
  }
});
commands.on('close', () => {
  server.close();
  server.closeAllConnections();
});
