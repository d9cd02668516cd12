// A real OpenID Connect provider (panva's oidc-provider, OpenID Certified) for kustody's
// console tests, installed by scripts/test into target/npm: any login is accepted (its
// development interactions); people whose name starts with "admin" are in group sec-admins,
// with "guest" in no group, the others in sec-viewers.
import Provider from 'oidc-provider';
const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [{
    client_id: 'kustody',
    client_secret: process.env.CLIENT_SECRET,
    redirect_uris: [process.env.REDIRECT_URI],
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
  scopes: ['openid', 'email', 'groups'],
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, email: `${id}@example.test`, email_verified: true,
                           groups: id.startsWith('admin') ? ['sec-admins'] : id.startsWith('guest') ? [] : ['sec-viewers'] }),
  }),
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  loadExistingGrant: async (ctx) => {
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid email groups');
    grant.addOIDCClaims(['email', 'email_verified', 'groups']);
    await grant.save();
    return grant;
  },
});
provider.listen(port, '127.0.0.1', () => console.log(`listening ${issuer}`));
