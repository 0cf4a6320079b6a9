// npm pack, then install the tarball into a fresh project and use every subpath from it, in
// JavaScript and in strict TypeScript: the package a user installs works, not just this checkout.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'));
const dir = mkdtempSync(join(tmpdir(), 'mandate-pack-'));
const run = (cmd, args, cwd) =>
  execFileSync(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
let failed = false;
try {
  const packed = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', dir], pkgDir));
  const tgz = join(dir, packed[0].filename);
  const files = packed[0].files.map((f) => f.path);
  for (const want of ['package.json', 'README.md', 'dist/envelope/index.js', 'dist/mcp/index.d.ts']) {
    if (!files.includes(want)) throw new Error(`the tarball lacks ${want}`);
  }
  const stray = files.filter((f) => /^(src|test|build|scripts)\//.test(f) || f.endsWith('.tsbuildinfo'));
  if (stray.length) throw new Error(`the tarball carries files users do not need: ${stray.join(', ')}`);

  const app = join(dir, 'app');
  execFileSync('mkdir', ['-p', app]);
  writeFileSync(
    join(app, 'package.json'),
    JSON.stringify({ name: 'fresh-app', private: true, type: 'module' }),
  );
  const dev = pkg.devDependencies;
  run(
    'npm',
    [
      'install',
      '--no-audit',
      '--no-fund',
      '--prefer-offline',
      tgz,
      `@modelcontextprotocol/sdk@${dev['@modelcontextprotocol/sdk']}`,
      `express@${dev.express}`,
      `@types/express@${dev['@types/express']}`,
      `@types/node@${dev['@types/node']}`,
      `zod@${dev.zod}`,
    ],
    app,
  );
  const program = `
import { generateEnvelopeKey, createSigner } from '@mandatehq/mandate/envelope';
import { Delegator } from '@mandatehq/mandate/delegator';
import { askUser, createBoundary, identity } from '@mandatehq/mandate/mcp';
import { createVerifier, protect } from '@mandatehq/mandate/downstream';
import { GrantRequiredError, grantRequired, REASON_KINDS } from '@mandatehq/mandate/errors';

const keys = await generateEnvelopeKey();
const signer = createSigner({ key: keys.privateJwk, clientId: 'app', issuer: 'https://mandate.test' });
const token = await signer.sign({
  actor: { type: 'user', sub: 'alice', tenant: 'acme' },
  agent: { id: 'agent' },
  session: { id: 's1' },
  delegation: { mode: 'on_behalf_of' },
});
const d = new Delegator({
  issuer: 'https://mandate.test', clientId: 'app', signer,
  clientAuth: { method: 'client_secret_basic', clientSecret: 'x' },
  audiences: { orders_api: { baseUrls: ['https://orders.test'] } },
});
const b = createBoundary({ issuer: 'https://idp.test', audience: 'https://mcp.test/mcp', clientId: 'app', agentId: 'agent' });
const v = createVerifier({ issuer: 'https://mandate.test', audience: 'orders_api' });
const ok = token.split('.').length === 3 && d.exchanges === 0 && b.middleware.length === 3 &&
  typeof v.verify === 'function' && typeof protect === 'function' && typeof identity === 'function' &&
  REASON_KINDS.no_active_grant === 'grant_required' && typeof GrantRequiredError === 'function' &&
  typeof askUser === 'function' && grantRequired(new Error('x')) === undefined &&
  typeof d.requestGrant === 'function' && typeof d.waitForGrant === 'function';
if (!ok) throw new Error('the installed package does not work');
console.log('fresh project: every subpath imports and works');
`;
  writeFileSync(join(app, 'main.mjs'), program);
  process.stdout.write(run('node', ['main.mjs'], app));
  writeFileSync(join(app, 'main.ts'), `${program}\nexport {};\n`);
  // The README's programs, as users will paste them, with its placeholders declared.
  const readme = readFileSync(join(pkgDir, 'README.md'), 'utf8');
  const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
  if (blocks.length < 3) throw new Error('the README has lost its programs');
  const preamble =
    'declare const IDP: string, MANDATE: string, SECRET: string;\n' +
    "declare const ENVELOPE_JWK: import('jose').JWK;\n";
  const readmeFiles = blocks.map((code, i) => {
    const name = `readme-${i}.ts`;
    writeFileSync(join(app, name), `${code}\n${preamble}export {};\n`);
    return name;
  });
  writeFileSync(
    join(app, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        target: 'ES2022',
        module: 'NodeNext',
        moduleResolution: 'NodeNext',
        strict: true,
        noEmit: true,
        types: ['node'],
        skipLibCheck: true,
      },
      files: ['main.ts', ...readmeFiles],
    }),
  );
  run(join(pkgDir, 'node_modules', '.bin', 'tsc'), ['-p', 'tsconfig.json'], app);
  console.log(
    `fresh project: strict TypeScript typechecks main.ts and the README's ${blocks.length} programs`,
  );
  // Only the documented subpaths are importable.
  const internal = spawnSync(
    'node',
    ['--input-type=module', '-e', "await import('@mandatehq/mandate/dist/internal/random.js')"],
    {
      cwd: app,
      encoding: 'utf8',
    },
  );
  if (internal.status === 0 || !internal.stderr.includes('ERR_PACKAGE_PATH_NOT_EXPORTED')) {
    throw new Error('an internal module is importable');
  }
  console.log('fresh project: internals are not exported');
} catch (e) {
  failed = true;
  console.error(`pack test failed: ${e.message}`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
console.log(failed ? '0 passed, 1 failed' : '1 passed, 0 failed');
process.exit(failed ? 1 : 0);
