// npm start: the whole demo, printed.
import { runDemo } from './demo.js';

try {
  await runDemo((line) => process.stdout.write(`${line}\n`));
} catch (e) {
  process.stderr.write(`demo: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
}
