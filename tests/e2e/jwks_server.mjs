#!/usr/bin/env node
// jwks_server.mjs — a scriptable loopback HTTP(S) server that plays a client's jwks_uri in smart-broker's e2e tests.
//
// Usage: node jwks_server.mjs KEYS_DIR [--tls WORKDIR]
//   KEYS_DIR holds the TEST-ONLY <name>.jwks.json files (tests/data/keys).
//   --tls also serves HTTPS with a certificate made at start (openssl CLI) in WORKDIR: WORKDIR/ca.pem is a fresh
//   test CA; the server certificate it signs is for DNS:localhost only (so https://127.0.0.1 fails host name
//   verification while https://localhost passes when the CA is trusted).
// Prints one JSON line on stdout when listening: {"port": P, "tls_port": T|null, "ca": "WORKDIR/ca.pem"|null}.
// Ends on SIGTERM or when stdin closes.
//
// Every request to a path outside /_admin is counted and answered from its route (404 when none is set).
// Admin API (JSON in, JSON out, never counted):
//   POST /_admin/route  {"path": "/a.json", "status": 200, "headers": {...}, "body": "..." | "keys": ["rs384-client"],
//                        "pad_to": N, "delay_ms": N, "drip_ms": N, "chunked": bool}
//        keys:     body = {"keys": [the key of each named file]}; content type application/json unless set
//        pad_to:   append spaces to the body until it has N bytes (still valid JSON)
//        delay_ms: wait before sending headers; drip_ms: send the body one byte per drip_ms
//        chunked:  no Content-Length (Transfer-Encoding: chunked)
//   GET  /_admin/count?path=/a.json  -> {"count": n}
//   GET  /_admin/counts              -> {"/a.json": n, ...}

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';

const keysDir = process.argv[2];
if (!keysDir) {
  process.stderr.write('usage: jwks_server.mjs KEYS_DIR [--tls WORKDIR]\n');
  process.exit(2);
}
const tlsIndex = process.argv.indexOf('--tls');
const tlsDir = tlsIndex > 0 ? process.argv[tlsIndex + 1] : null;

const routes = new Map();
const counts = new Map();

function keyOf(name) {
  const set = JSON.parse(fs.readFileSync(path.join(keysDir, `${name}.jwks.json`), 'utf8'));
  return set.keys[0];
}

function buildRoute(spec) {
  let body = spec.body ?? '';
  if (Array.isArray(spec.keys)) body = JSON.stringify({ keys: spec.keys.map(keyOf) });
  if (Number.isInteger(spec.pad_to) && body.length < spec.pad_to) body += ' '.repeat(spec.pad_to - body.length);
  const headers = { 'Content-Type': 'application/json', ...(spec.headers ?? {}) };
  for (const [k, v] of Object.entries(headers)) if (v === null) delete headers[k];
  return {
    status: spec.status ?? 200,
    headers,
    body: Buffer.from(body, 'utf8'),
    delay: spec.delay_ms ?? 0,
    drip: spec.drip_ms ?? 0,
    chunked: spec.chunked === true,
  };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function json(res, status, obj) {
  const text = JSON.stringify(obj);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

async function admin(req, res, url) {
  if (req.method === 'POST' && url.pathname === '/_admin/route') {
    const spec = JSON.parse(await readBody(req));
    if (typeof spec.path !== 'string' || !spec.path.startsWith('/')) throw new Error('"path" must start with /');
    routes.set(spec.path, buildRoute(spec));
    return json(res, 200, { ok: true });
  }
  if (req.method === 'GET' && url.pathname === '/_admin/count') {
    return json(res, 200, { count: counts.get(url.searchParams.get('path')) ?? 0 });
  }
  if (req.method === 'GET' && url.pathname === '/_admin/counts') {
    return json(res, 200, Object.fromEntries(counts));
  }
  return json(res, 404, { error: 'unknown admin call' });
}

async function serve(req, res) {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname.startsWith('/_admin/')) return admin(req, res, url);
  counts.set(url.pathname, (counts.get(url.pathname) ?? 0) + 1);
  const route = routes.get(url.pathname);
  if (!route) return json(res, 404, { error: 'no route' });
  if (route.delay) await sleep(route.delay);
  const headers = { ...route.headers };
  if (!route.chunked) headers['Content-Length'] = route.body.length;
  res.writeHead(route.status, headers);
  if (route.drip) {
    for (let i = 0; i < route.body.length && !res.destroyed; ++i) {
      res.write(route.body.subarray(i, i + 1));
      await sleep(route.drip);
    }
    return res.end();
  }
  if (route.chunked) {
    // Several chunks, so that the reader's cap is exercised on a stream, not on a declared length.
    for (let i = 0; i < route.body.length; i += 4096) res.write(route.body.subarray(i, i + 4096));
    return res.end();
  }
  res.end(route.body);
}

function handler(req, res) {
  serve(req, res).catch((e) => {
    if (!res.headersSent) json(res, 500, { error: String(e?.message ?? e) });
    else res.destroy();
  });
}

function makeCertificates(dir) {
  fs.mkdirSync(dir, { recursive: true });
  const run = (args) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  run(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-subj', '/CN=smart-broker e2e TEST-ONLY CA', '-keyout', 'ca.key', '-out', 'ca.pem',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  run(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=localhost',
    '-keyout', 'server.key', '-out', 'server.csr']);
  fs.writeFileSync(path.join(dir, 'server.ext'),
    'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n');
  run(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2',
    '-extfile', 'server.ext', '-out', 'server.pem']);
  return { key: fs.readFileSync(path.join(dir, 'server.key')), cert: fs.readFileSync(path.join(dir, 'server.pem')) };
}

const plain = http.createServer(handler);
plain.keepAliveTimeout = 1000;
let secure = null;
if (tlsDir) {
  secure = https.createServer(makeCertificates(tlsDir), handler);
}

function listen(server) {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server.address().port)));
}

const port = await listen(plain);
const tlsPort = secure ? await listen(secure) : null;
process.stdout.write(JSON.stringify({ port, tls_port: tlsPort, ca: tlsDir ? path.join(tlsDir, 'ca.pem') : null }) + '\n');

const stop = () => process.exit(0);
process.on('SIGTERM', stop);
process.stdin.on('end', stop);
process.stdin.resume();
