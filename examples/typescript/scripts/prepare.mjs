// The example depends on the SDK in this repository (file:../../sdk/typescript): make sure it is
// installed and built, so `npm ci && npm start` is all a reader needs.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const sdk = resolve(dirname(fileURLToPath(import.meta.url)), '../../../sdk/typescript');
const npm = (...args) => execFileSync('npm', args, { cwd: sdk, stdio: ['ignore', 'ignore', 'inherit'] });
if (!existsSync(join(sdk, 'node_modules', '.bin', 'tsc'))) npm('ci', '--no-audit', '--no-fund');
npm('run', 'build');
