/**
 * Whether url is under base: the same scheme, host and port, and a path that equals base's or
 * continues it after a "/". Both are parsed by the WHATWG URL parser first, so dot segments
 * (also percent-encoded ones) cannot climb out of base's path.
 */
export function isUnder(url: URL, base: URL): boolean {
  if (url.protocol !== base.protocol || url.host !== base.host) return false;
  if (url.username !== '' || url.password !== '') return false;
  const prefix = base.pathname.endsWith('/') ? base.pathname : `${base.pathname}/`;
  return url.pathname === base.pathname || url.pathname.startsWith(prefix) || `${url.pathname}/` === prefix;
}

/** Parses and checks a configured base URL: http(s), no credentials, no query or fragment. */
export function parseBaseUrl(raw: string | URL): URL {
  const u = new URL(String(raw));
  if (u.protocol !== 'https:' && u.protocol !== 'http:') {
    throw new TypeError(`base URL ${u.href} must be http or https`);
  }
  if (u.username || u.password || u.search || u.hash) {
    throw new TypeError(
      `base URL ${u.origin}${u.pathname} must not carry credentials, a query or a fragment`,
    );
  }
  return u;
}
