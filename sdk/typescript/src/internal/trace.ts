import { randomHex } from './random.js';

/** A parsed W3C Trace Context `traceparent` (https://www.w3.org/TR/trace-context/). */
export interface Traceparent {
  version: string;
  traceId: string;
  parentId: string;
  flags: string;
}

const HEX = /^[0-9a-f]+$/;
const allZero = (s: string) => /^0+$/.test(s);

/**
 * Parses a traceparent header. Version 00 must be exactly version-trace-parent-flags; a higher
 * version may carry more fields after a dash, which are ignored as the specification asks.
 */
export function parseTraceparent(value: unknown): Traceparent | undefined {
  if (typeof value !== 'string') return undefined;
  const s = value.trim();
  if (s.length < 55 || s[2] !== '-' || s[35] !== '-' || s[52] !== '-') return undefined;
  const tp = {
    version: s.slice(0, 2),
    traceId: s.slice(3, 35),
    parentId: s.slice(36, 52),
    flags: s.slice(53, 55),
  };
  if (![tp.version, tp.traceId, tp.parentId, tp.flags].every((p) => HEX.test(p)) || tp.version === 'ff') {
    return undefined;
  }
  if (tp.version === '00' && s.length !== 55) return undefined;
  if (s.length > 55 && s[55] !== '-') return undefined;
  if (allZero(tp.traceId) || allZero(tp.parentId)) return undefined;
  return tp;
}

/** A fresh random W3C trace id. */
export const newTraceId = (): string => randomHex(16);

/** A fresh random W3C span (parent) id. */
export const newSpanId = (): string => randomHex(8);

/**
 * The traceparent to send on a downstream call in trace traceId: a new span id, the caller's flags.
 * An opaque (non-W3C) trace id yields undefined: it then travels in the token only.
 */
export function childTraceparent(traceId: string | undefined, flags: string | undefined): string | undefined {
  if (!traceId || traceId.length !== 32 || !HEX.test(traceId) || allZero(traceId)) return undefined;
  const f = flags && flags.length === 2 && HEX.test(flags) ? flags : '01';
  return `00-${traceId}-${newSpanId()}-${f}`;
}
