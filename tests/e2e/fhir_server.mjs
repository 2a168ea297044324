#!/usr/bin/env node
// fhir_server.mjs — a loopback test server for smart-broker's consent e2e tests: a FHIR R4 server that serves
// Consent resources (GET /Consent/{id}, application/fhir+json) and the consent platform's notification receiver
// (POST /notifications).
//
// Usage: node fhir_server.mjs
// Prints one JSON line on stdout when listening: {"port": P}. Ends on SIGTERM or when stdin closes.
//
// Admin API (JSON in, JSON out):
//   POST /_admin/consent        a FHIR R4 Consent resource: stored under its id (replaces)
//   POST /_admin/status         {"id": "...", "status": "inactive"}: switches a stored Consent's status
//   POST /_admin/gone           {"id": "..."}: the Consent answers 410 Gone from now on
//   POST /_admin/receiver       {"mode": "ok" | "fail" | "reset"}: notifications answer 204, 503, or the
//                               connection is destroyed without an answer (an outage)
//   GET  /_admin/notifications  -> {"received": [bodies accepted, parsed], "attempts": n (every POST seen)}
//   GET  /_admin/count?id=...   -> {"count": n} GETs of /Consent/{id}

import http from 'node:http';

const consents = new Map();
const gone = new Set();
const reads = new Map();
const received = [];
let attempts = 0;
let receiverMode = 'ok';

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res, status, obj, type = 'application/json') {
  const text = JSON.stringify(obj);
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

const operationOutcome = (code, text) => ({
  resourceType: 'OperationOutcome',
  issue: [{ severity: 'error', code, diagnostics: text }],
});

async function admin(req, res, url) {
  if (req.method === 'POST' && url.pathname === '/_admin/consent') {
    const resource = JSON.parse(await readBody(req));
    if (resource.resourceType !== 'Consent' || typeof resource.id !== 'string') throw new Error('not a Consent');
    consents.set(resource.id, resource);
    gone.delete(resource.id);
    return send(res, 200, { ok: true });
  }
  if (req.method === 'POST' && url.pathname === '/_admin/status') {
    const { id, status } = JSON.parse(await readBody(req));
    const resource = consents.get(id);
    if (!resource) return send(res, 404, { error: 'unknown consent' });
    resource.status = status;
    resource.meta = { versionId: String(Number(resource.meta?.versionId ?? '1') + 1), lastUpdated: new Date().toISOString() };
    return send(res, 200, { ok: true });
  }
  if (req.method === 'POST' && url.pathname === '/_admin/gone') {
    const { id } = JSON.parse(await readBody(req));
    gone.add(id);
    return send(res, 200, { ok: true });
  }
  if (req.method === 'POST' && url.pathname === '/_admin/receiver') {
    const { mode } = JSON.parse(await readBody(req));
    if (!['ok', 'fail', 'reset'].includes(mode)) throw new Error('mode must be ok, fail or reset');
    receiverMode = mode;
    return send(res, 200, { ok: true });
  }
  if (req.method === 'GET' && url.pathname === '/_admin/notifications') {
    return send(res, 200, { received, attempts });
  }
  if (req.method === 'GET' && url.pathname === '/_admin/count') {
    return send(res, 200, { count: reads.get(url.searchParams.get('id')) ?? 0 });
  }
  return send(res, 404, { error: 'unknown admin call' });
}

async function serve(req, res) {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname.startsWith('/_admin/')) return admin(req, res, url);
  const match = /^\/Consent\/([A-Za-z0-9\-.]{1,64})$/.exec(url.pathname);
  if (match && req.method === 'GET') {
    const id = match[1];
    reads.set(id, (reads.get(id) ?? 0) + 1);
    if (gone.has(id)) return send(res, 410, operationOutcome('deleted', `Consent/${id} was deleted`), 'application/fhir+json');
    const resource = consents.get(id);
    if (!resource) return send(res, 404, operationOutcome('not-found', `Consent/${id} is not known`), 'application/fhir+json');
    return send(res, 200, resource, 'application/fhir+json; charset=utf-8');
  }
  if (url.pathname === '/notifications' && req.method === 'POST') {
    attempts += 1;
    const body = await readBody(req);
    if (receiverMode === 'reset') return req.socket.destroy();
    if (receiverMode === 'fail') return send(res, 503, { error: 'consent platform is down' });
    received.push({ content_type: req.headers['content-type'], body: JSON.parse(body) });
    res.writeHead(204);
    return res.end();
  }
  return send(res, 404, operationOutcome('not-found', 'no such endpoint'), 'application/fhir+json');
}

const server = http.createServer((req, res) => {
  serve(req, res).catch((e) => {
    if (!res.headersSent) send(res, 500, { error: String(e?.message ?? e) });
    else res.destroy();
  });
});
server.keepAliveTimeout = 1000;
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});

const stop = () => process.exit(0);
process.on('SIGTERM', stop);
process.stdin.on('end', stop);
process.stdin.resume();
