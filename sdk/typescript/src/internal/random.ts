import { randomBytes } from 'node:crypto';

/** n random bytes, base64url: ids (jti, session ids) nobody can guess. */
export function randomId(n: number): string {
  return randomBytes(n).toString('base64url');
}

/** n random bytes as lowercase hex (W3C trace and span ids). */
export function randomHex(n: number): string {
  return randomBytes(n).toString('hex');
}
