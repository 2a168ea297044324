#!/usr/bin/env bash
# jose_helper.selftest.sh — smoke test for jose_helper.mjs (the e2e tests' JWT helper).
# Pipes a batch of commands through one helper process and checks each answer line with grep.
# Signs with the TEST-ONLY keys in tests/data/keys and verifies through jose, both with an
# inline JWK Set and over HTTP from a throwaway loopback JWKS server.
# Usage: tests/e2e/jose_helper.selftest.sh        (runs `npm ci` first if jose is missing)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
keys="$(cd "${here}/../data/keys" && pwd)"
cd "${here}"
if [[ ! -d node_modules/jose ]]; then
  npm ci --no-audit --no-fund >/dev/null
fi

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [[ -n "${server_pid}" ]]; then kill "${server_pid}" 2>/dev/null || true; fi
  rm -rf "${work}"
}
trap cleanup EXIT

# Loopback JWKS server for the remote-verify case; it prints its port once listening.
node --input-type=commonjs -e '
  const http = require("node:http"), fs = require("node:fs");
  const body = fs.readFileSync(process.argv[1]);
  const srv = http.createServer((req, res) => {
    res.writeHead(200, { "content-type": "application/json" }); res.end(body);
  });
  srv.listen(0, "127.0.0.1", () => { console.log(srv.address().port); });
' "${keys}/es256-client.jwks.json" >"${work}/port" &
server_pid=$!
for _ in $(seq 50); do [[ -s "${work}/port" ]] && break; sleep 0.1; done
port="$(cat "${work}/port")"
[[ -n "${port}" ]] || { echo "FAIL: JWKS server did not start" >&2; exit 1; }

now="$(date +%s)"
exp=$((now + 300))
rs384_jwks="$(tr -d '\n ' <"${keys}/rs384-client.jwks.json")"
es384_jwks="$(tr -d '\n ' <"${keys}/es384-client.jwks.json")"
claims='"iss":"c1","sub":"c1","aud":"http://127.0.0.1/token","exp":'"${exp}"',"jti":"j1"'

# Batch run (all commands piped at once): ping, not JSON, unknown op, missing key file,
# sign ES384 with an unknown crit (must still be produced).
{
  echo '{"op":"ping","id":1}'
  echo 'this is not json'
  echo '{"op":"frobnicate"}'
  echo '{"op":"sign","alg":"RS384","key":"/nonexistent/key.pem","payload":{}}'
  echo '{"op":"sign","alg":"ES384","key":"'"${keys}"'/es384-client.pem","header":{"kid":"es384-client","crit":["x-unknown"],"x-unknown":true},"payload":{'"${claims}"'}}'
} >"${work}/batch1"
node jose_helper.mjs <"${work}/batch1" >"${work}/out1"

sign_rs='{"op":"sign","alg":"RS384","key":"'"${keys}"'/rs384-client.pem","header":{"kid":"rs384-client"},"payload":{'"${claims}"'}}'
jose_rs='{"op":"jose_sign","alg":"RS384","key":"'"${keys}"'/rs384-client.pem","kid":"rs384-client","iss":"c1","sub":"c1","aud":"http://127.0.0.1/token"}'
sign_es='{"op":"sign","alg":"ES256","key":"'"${keys}"'/es256-client.pem","header":{"kid":"es256-client","typ":"at+jwt"},"payload":{'"${claims}"'}}'
sign_es384='{"op":"sign","alg":"ES384","key":"'"${keys}"'/es384-client.pem","header":{"kid":"es384-client"},"payload":{'"${claims}"'}}'

# Interactive run: one helper as a coprocess, one command written and one answer read at a time
# (the way the C++ harness drives it); tokens it signs are fed back to it for verification.
coproc HELPER { node jose_helper.mjs; }
ask() { # one command in, one answer line out
  printf '%s\n' "$1" >&"${HELPER[1]}"
  local line
  IFS= read -r -t 20 line <&"${HELPER[0]}" || { echo "FAIL: no answer to: $1" >&2; exit 1; }
  printf '%s\n' "${line}"
}
jwt_of() { sed -n 's/^.*"jwt":"\([^"]*\)".*$/\1/p' <<<"$1"; }

a6="$(ask "${sign_rs}")";   t6="$(jwt_of "${a6}")"
a7="$(ask '{"op":"verify","token":"'"${t6}"'","jwks":'"${rs384_jwks}"',"algorithms":["RS384"],"issuer":"c1","audience":"http://127.0.0.1/token","typ":"JWT"}')"
a8="$(ask "${jose_rs}")";   t8="$(jwt_of "${a8}")"
a9="$(ask '{"op":"verify","token":"'"${t8}"'","jwks":'"${rs384_jwks}"',"algorithms":["RS384"],"issuer":"c1","audience":"http://127.0.0.1/token"}')"
a10="$(ask "${sign_es}")";  t10="$(jwt_of "${a10}")"
a11="$(ask '{"op":"verify","token":"'"${t10}"'","jwks_url":"http://127.0.0.1:'"${port}"'/jwks.json","issuer":"c1","audience":"http://127.0.0.1/token","typ":"at+jwt"}')"
a12="$(ask '{"op":"verify","token":"'"${t10}"'","jwks_url":"http://127.0.0.1:'"${port}"'/jwks.json","typ":"JWT"}')"
a13="$(ask '{"op":"hs256","secret_file":"'"${keys}"'/rs384-client.jwks.json","payload":{"a":1}}')"
a14="$(ask '{"op":"none","payload":{"a":1}}')"
# {"alg":"none"} . {"a":1} . (empty)
a15="$(ask '{"op":"decode","token":"eyJhbGciOiJub25lIn0.eyJhIjoxfQ."}')"
a16="$(ask "${sign_es384}")"; t16="$(jwt_of "${a16}")"
a17="$(ask '{"op":"verify","token":"'"${t16}"'","jwks":'"${es384_jwks}"',"algorithms":["ES384"],"issuer":"c1"}')"
a18="$(ask '{"op":"decode","token":"'"${t10}"'"}')"
helper_in="${HELPER[1]}"
exec {helper_in}>&-   # EOF to the helper: it must then exit
wait "${HELPER_PID}" || true

fails=0
check() { # description, answer, grep -E pattern
  if grep -Eq -- "$3" <<<"$2"; then
    echo "ok   $1"
  else
    echo "FAIL $1: got: $2" >&2
    fails=$((fails + 1))
  fi
}
mapfile -t out1 <"${work}/out1"
check "one answer per command"        "${#out1[@]}" '^5$'
check "ping echoes id"                "${out1[0]}" '^\{"id":1,"ok":true\}$'
check "non-JSON command -> error"     "${out1[1]}" '^\{"error":"command is not JSON'
check "unknown op -> error"           "${out1[2]}" '^\{"error":"unknown op'
check "missing key file -> error"     "${out1[3]}" '^\{"error":"sign: ENOENT'
check "sign with unknown crit"        "${out1[4]}" '^\{"jwt":"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{128}"\}$'
check "sign RS384 (node:crypto)"      "${a6}"  '^\{"jwt":"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{342}"\}$'
check "verify RS384 inline JWKS"      "${a7}"  '^\{"ok":true,"header":\{"alg":"RS384","typ":"JWT","kid":"rs384-client"\},"payload":\{"iss":"c1"'
check "jose_sign RS384"               "${a8}"  '^\{"jwt":"eyJ'
check "verify jose-signed token"      "${a9}"  '"ok":true.*"jti":"[0-9a-f-]{36}"'
check "sign ES256 typ at+jwt"         "${a10}" '^\{"jwt":"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{86}"\}$'
check "verify ES256 via remote JWKS"  "${a11}" '^\{"ok":true,"header":\{"alg":"ES256","typ":"at\+jwt","kid":"es256-client"\}'
check "wrong typ refused by jose"     "${a12}" '^\{"ok":false,"code":"ERR_JWT_CLAIM_VALIDATION_FAILED","error":"ERR_JWT_CLAIM_VALIDATION_FAILED: unexpected \\"typ\\"'
check "hs256"                         "${a13}" '^\{"jwt":"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9\.eyJhIjoxfQ\.[A-Za-z0-9_-]{43}"\}$'
check "none"                          "${a14}" '^\{"jwt":"eyJhbGciOiJub25lIn0\.eyJhIjoxfQ\."\}$'
check "decode"                        "${a15}" '^\{"header":\{"alg":"none"\},"payload":\{"a":1\},"signature_bytes":0\}$'
check "verify ES384 (raw R||S)"       "${a17}" '^\{"ok":true,"header":\{"alg":"ES384"'
check "decode ES256 token"            "${a18}" '"signature_bytes":64\}$'

if [[ "${fails}" -ne 0 ]]; then
  echo "${fails} check(s) failed" >&2
  exit 1
fi
echo "jose_helper self-test passed"
