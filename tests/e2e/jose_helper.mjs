#!/usr/bin/env node
// jose_helper.mjs — long-running JWT helper for smart-broker's C++ end-to-end tests.
//
// Protocol: one JSON command per line on stdin; exactly one JSON line per command on stdout,
// in command order. Blank lines are ignored. A bad command never ends the process: it is
// answered with {"error": "..."}. If a command carries "id", the answer echoes it.
// The process ends when stdin closes (after answering everything received).
//
// Commands (key paths are absolute, or relative to the helper's working directory):
//
//  {"op":"ping"}                                        -> {"ok":true}
//
//  {"op":"sign","alg":"RS384","key":"/abs/key.pem","header":{...},"payload":{...}}
//      Builds the JWS itself and signs with node:crypto, so ANY header can be produced
//      (unknown crit, jku, wrong typ, alg that differs from the signing alg, ...).
//      Protected header = {"alg": <alg>, "typ": "JWT"} overlaid with "header"; members
//      listed in "drop_header" (array of names) are then removed.
//      Signing algs: RS256/384/512 (PKCS#1 v1.5), PS256/384/512, ES256/384/512, EdDSA.
//      Optional: "header_raw"/"payload_raw" (strings, used verbatim instead of JSON.stringify),
//      "signature_encoding":"der" (ECDSA only: DER signature instead of raw R||S).
//      -> {"jwt":"..."}
//
//  {"op":"jose_sign","alg":"RS384","key":"/abs/key.pem","kid":"...","payload":{...},
//   "iss":..,"sub":..,"aud":..,"exp":..,"jti":..}
//      Happy path signed by jose's SignJWT: header {alg, kid, typ:"JWT"}; claims = payload
//      overlaid with the top-level iss/sub/aud/exp/jti given; exp defaults to now+300,
//      jti to a random UUID. -> {"jwt":"..."}
//
//  {"op":"hs256","secret_file":"/abs/file","header":{...},"payload":{...}}
//      HMAC-SHA256 keyed with the raw bytes of the file (e.g. a public key PEM / JWKS).
//      Header = {"alg":"HS256","typ":"JWT"} overlaid with "header". -> {"jwt":"..."}
//
//  {"op":"none","header":{...},"payload":{...}}
//      Unsecured JWT b64(header).b64(payload). with header {"alg":"none"} overlaid. -> {"jwt":"..."}
//
//  {"op":"verify","token":"...","jwks_url":"http://127.0.0.1:PORT/jwks.json","issuer":"...",
//   "audience":"...","typ":"at+jwt"}
//      jose createRemoteJWKSet (a fresh one per call, so nothing is cached) + jwtVerify with
//      algorithms ["ES256","RS256"] (override with "algorithms"), typ checked by jose.
//      Instead of jwks_url, "jwks": {...inline JWK Set...} may be given.
//      Optional: "clock_tolerance" (seconds), "required_claims" (array), "current_date" (NumericDate).
//      -> {"ok":true,"header":{...},"payload":{...}} or {"ok":false,"code":"ERR_...","error":"ERR_...: message"}
//
//  {"op":"decode","token":"..."}  -> {"header":{...},"payload":{...}} (no verification; payload is
//      null when it is not JSON, "payload_text" then holds it)
//
//  {"op":"thumbprint","jwk":{...}[,"digest":"sha256"]} -> {"thumbprint":"..."} (RFC 7638, jose)

import crypto from 'node:crypto';
import fs from 'node:fs';
import readline from 'node:readline';
import * as jose from 'jose';

const b64u = (data) => Buffer.from(data).toString('base64url');

function send(obj) {
  // stdout to a pipe or file is synchronous in node on Linux: each line is flushed as written.
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function need(cmd, name, type) {
  const v = cmd[name];
  if (type === 'object' ? !isObject(v) : typeof v !== type) {
    throw new Error(`"${name}" must be a ${type === 'object' ? 'JSON object' : type}`);
  }
  return v;
}

function optObject(cmd, name) {
  if (cmd[name] === undefined) return {};
  return need(cmd, name, 'object');
}

function buildHeader(base, cmd) {
  const header = { ...base, ...optObject(cmd, 'header') };
  if (cmd.drop_header !== undefined) {
    if (!Array.isArray(cmd.drop_header)) throw new Error('"drop_header" must be an array of names');
    for (const name of cmd.drop_header) delete header[name];
  }
  return header;
}

function encodePart(cmd, rawName, value) {
  if (cmd[rawName] !== undefined) {
    if (typeof cmd[rawName] !== 'string') throw new Error(`"${rawName}" must be a string`);
    return b64u(Buffer.from(cmd[rawName], 'utf8'));
  }
  return b64u(JSON.stringify(value));
}

function signingInput(cmd, header) {
  const payload = cmd.payload === undefined ? {} : cmd.payload;
  return `${encodePart(cmd, 'header_raw', header)}.${encodePart(cmd, 'payload_raw', payload)}`;
}

function loadPrivateKey(path) {
  return crypto.createPrivateKey(fs.readFileSync(path));
}

function signWithNodeCrypto(alg, key, data, sigEncoding) {
  const m = /^(RS|PS|ES)(256|384|512)$/.exec(alg);
  if (m) {
    const digest = `sha${m[2]}`;
    if (m[1] === 'RS') return crypto.sign(digest, data, key);
    if (m[1] === 'PS') {
      return crypto.sign(digest, data, {
        key,
        padding: crypto.constants.RSA_PKCS1_PSS_PADDING,
        saltLength: Number(m[2]) / 8,
      });
    }
    return crypto.sign(digest, data, { key, dsaEncoding: sigEncoding === 'der' ? 'der' : 'ieee-p1363' });
  }
  if (alg === 'EdDSA' || alg === 'Ed25519') return crypto.sign(null, data, key);
  throw new Error(`unsupported signing alg ${JSON.stringify(alg)} (RS*/PS*/ES*/EdDSA; use op hs256 or none)`);
}

function opSign(cmd) {
  const alg = need(cmd, 'alg', 'string');
  const key = loadPrivateKey(need(cmd, 'key', 'string'));
  const input = signingInput(cmd, buildHeader({ alg, typ: 'JWT' }, cmd));
  const sig = signWithNodeCrypto(alg, key, Buffer.from(input, 'ascii'), cmd.signature_encoding);
  return { jwt: `${input}.${b64u(sig)}` };
}

function opHs256(cmd) {
  const secret = fs.readFileSync(need(cmd, 'secret_file', 'string'));
  const input = signingInput(cmd, buildHeader({ alg: 'HS256', typ: 'JWT' }, cmd));
  const sig = crypto.createHmac('sha256', secret).update(input, 'ascii').digest();
  return { jwt: `${input}.${b64u(sig)}` };
}

function opNone(cmd) {
  return { jwt: `${signingInput(cmd, buildHeader({ alg: 'none' }, cmd))}.` };
}

async function opJoseSign(cmd) {
  const alg = need(cmd, 'alg', 'string');
  const key = loadPrivateKey(need(cmd, 'key', 'string'));
  const claims = { ...optObject(cmd, 'payload') };
  for (const name of ['iss', 'sub', 'aud', 'exp', 'jti']) {
    if (cmd[name] !== undefined) claims[name] = cmd[name];
  }
  const header = { alg, typ: 'JWT' };
  if (cmd.kid !== undefined) header.kid = need(cmd, 'kid', 'string');
  const jwt = new jose.SignJWT(claims).setProtectedHeader(header);
  if (claims.exp === undefined) jwt.setExpirationTime(Math.floor(Date.now() / 1000) + 300);
  if (claims.jti === undefined) jwt.setJti(crypto.randomUUID());
  return { jwt: await jwt.sign(key) };
}

async function opVerify(cmd) {
  const token = need(cmd, 'token', 'string');
  let keySet;
  if (cmd.jwks !== undefined) {
    keySet = jose.createLocalJWKSet(need(cmd, 'jwks', 'object'));
  } else {
    // Fresh per call: createRemoteJWKSet caches keys and rate-limits refetches.
    keySet = jose.createRemoteJWKSet(new URL(need(cmd, 'jwks_url', 'string')), { timeoutDuration: 5000 });
  }
  const options = { algorithms: cmd.algorithms ?? ['ES256', 'RS256'] };
  if (cmd.issuer !== undefined) options.issuer = cmd.issuer;
  if (cmd.audience !== undefined) options.audience = cmd.audience;
  if (cmd.typ !== undefined) options.typ = cmd.typ;
  if (cmd.clock_tolerance !== undefined) options.clockTolerance = cmd.clock_tolerance;
  if (cmd.required_claims !== undefined) options.requiredClaims = cmd.required_claims;
  if (cmd.current_date !== undefined) options.currentDate = new Date(cmd.current_date * 1000);
  try {
    const { payload, protectedHeader } = await jose.jwtVerify(token, keySet, options);
    return { ok: true, header: protectedHeader, payload };
  } catch (e) {
    const code = e?.code ?? e?.name ?? 'ERR';
    return { ok: false, code, error: `${code}: ${e?.message ?? String(e)}` };
  }
}

function decodePart(part, what) {
  const text = Buffer.from(part, 'base64url').toString('utf8');
  try {
    return { value: JSON.parse(text), text };
  } catch {
    if (what === 'header') throw new Error('header is not JSON');
    return { value: null, text };
  }
}

function opDecode(cmd) {
  const parts = need(cmd, 'token', 'string').split('.');
  if (parts.length !== 3) throw new Error(`token has ${parts.length} parts, expected 3`);
  const header = decodePart(parts[0], 'header').value;
  const payload = decodePart(parts[1], 'payload');
  const out = { header, payload: payload.value, signature_bytes: Buffer.from(parts[2], 'base64url').length };
  if (payload.value === null) out.payload_text = payload.text;
  return out;
}

async function opThumbprint(cmd) {
  return { thumbprint: await jose.calculateJwkThumbprint(need(cmd, 'jwk', 'object'), cmd.digest ?? 'sha256') };
}

const ops = {
  ping: () => ({ ok: true }),
  sign: opSign,
  jose_sign: opJoseSign,
  hs256: opHs256,
  none: opNone,
  verify: opVerify,
  decode: opDecode,
  thumbprint: opThumbprint,
};

async function handle(line) {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    return { error: `command is not JSON: ${e.message}` };
  }
  if (!isObject(cmd)) return { error: 'command must be a JSON object' };
  const id = cmd.id;
  let answer;
  try {
    const fn = Object.hasOwn(ops, cmd.op) ? ops[cmd.op] : undefined;
    answer = fn ? await fn(cmd) : { error: `unknown op ${JSON.stringify(cmd.op)} (${Object.keys(ops).join(', ')})` };
  } catch (e) {
    answer = { error: `${cmd.op}: ${e?.message ?? String(e)}` };
  }
  return id === undefined ? answer : { id, ...answer };
}

// Answers leave in command order: each command waits for the previous one.
let chain = Promise.resolve();
process.stdout.on('error', () => process.exit(0)); // the test process went away (EPIPE)
const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity, terminal: false });
rl.on('line', (line) => {
  if (line.trim() === '') return;
  chain = chain.then(() => handle(line)).then(send, (e) => send({ error: String(e) }));
});
rl.on('close', () => {
  chain.then(() => process.exit(0));
});
