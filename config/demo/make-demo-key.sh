#!/usr/bin/env bash
# make-demo-key.sh — create the DEMO system key pair used by the README walkthrough.
#
#   *** DEMO ONLY ***  The private key this writes (demo-client.key.pem) is committed to
#   the public repository: anyone can sign assertions with it. Never register
#   demo-client.jwks.json (kid "demo-key-1") with a production broker.
#
# Output (next to this script):
#   demo-client.key.pem   RSA 2048 private key, PKCS#8 PEM
#   demo-client.jwks.json public JWK Set: {"keys":[{kty,n,e,"kid":"demo-key-1","alg":"RS384","use":"sig"}]}
#
# Usage: config/demo/make-demo-key.sh [--force]   (an existing key is kept unless --force)
# Needs: openssl (3.x), node (>= 16; only node's built-in crypto).
set -euo pipefail

force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
key="${here}/demo-client.key.pem"
jwks="${here}/demo-client.jwks.json"

if [[ -e "${key}" && "${force}" -eq 0 ]]; then
  echo "keep     ${key} (use --force to regenerate)"
else
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "${key}.tmp" 2>/dev/null
  mv "${key}.tmp" "${key}"
  echo "generate ${key}"
fi

node --input-type=commonjs -e '
  const crypto = require("node:crypto");
  const fs = require("node:fs");
  const jwk = crypto.createPublicKey(fs.readFileSync(process.argv[1])).export({ format: "jwk" });
  const out = { keys: [{ ...jwk, kid: "demo-key-1", alg: "RS384", use: "sig" }] };
  process.stdout.write(JSON.stringify(out, null, 2) + "\n");
' "${key}" >"${jwks}.tmp"
mv "${jwks}.tmp" "${jwks}"
chmod 0644 "${key}" "${jwks}"   # a committed demo fixture; readable on purpose
echo "write    ${jwks}"
