// Builds the Mandate binary the integration tests run, from this repository, unless MANDATE_BIN
// names one already. Output: build/mandate.
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const repo = resolve(pkg, '../..');
if (process.env.MANDATE_BIN) {
  console.log(`using MANDATE_BIN=${process.env.MANDATE_BIN}`);
} else {
  mkdirSync(join(pkg, 'build'), { recursive: true });
  const out = join(pkg, 'build', 'mandate');
  const path = `${process.env.PATH ?? ''}:/usr/local/go/bin`;
  execFileSync('go', ['build', '-o', out, './cmd/mandate'], {
    cwd: repo,
    stdio: 'inherit',
    env: { ...process.env, PATH: path },
  });
  console.log(`built ${out}`);
}
