#!/usr/bin/env bash
# make-keys.sh — generate the fixed key material used by smart-broker's tests.
#
#   *** TEST-ONLY KEYS ***
#   Every private key this script writes is committed to the public repository
#   and is therefore compromised by design. Never register any of them (or the
#   matching JWK Sets) with a real smart-broker deployment or any other system.
#
# Output (tests/data/keys/):
#   <name>.pem        private key, PKCS#8 PEM (openssl genpkey)
#   <name>.jwks.json  public JWK Set {"keys":[{...,"kid":"<name>","use":"sig"[,"alg":...]}]}
#                     produced with node's crypto (no npm packages needed)
#
# The keys are generated once and committed; re-running the script leaves
# existing keys untouched unless --force is given (tests rely on stable files).
#
# Usage: tests/data/make-keys.sh [--force]
# Needs: openssl (3.x), node (>= 16).
set -euo pipefail

force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${here}/keys"
mkdir -p "${out}"

# name | openssl genpkey arguments | JWK "alg" ("-" = leave "alg" out: not implied by the name)
specs=(
  "rs384-client|-algorithm RSA -pkeyopt rsa_keygen_bits:2048|RS384"
  "rs256-client|-algorithm RSA -pkeyopt rsa_keygen_bits:2048|RS256"
  "es384-client|-algorithm EC -pkeyopt ec_paramgen_curve:P-384 -pkeyopt ec_param_enc:named_curve|ES384"
  "es256-client|-algorithm EC -pkeyopt ec_paramgen_curve:P-256 -pkeyopt ec_param_enc:named_curve|ES256"
  "other-client|-algorithm RSA -pkeyopt rsa_keygen_bits:2048|-"
  "wrong|-algorithm RSA -pkeyopt rsa_keygen_bits:2048|-"
  "rsa1024|-algorithm RSA -pkeyopt rsa_keygen_bits:1024|-"
  "p521|-algorithm EC -pkeyopt ec_paramgen_curve:P-521 -pkeyopt ec_param_enc:named_curve|ES512"
)

# Public JWK Set from a private PEM, via node's crypto.
jwks_from_pem() { # $1 = pem path, $2 = kid, $3 = alg or "-"
  node --input-type=commonjs -e '
    const crypto = require("node:crypto");
    const fs = require("node:fs");
    const [pemPath, kid, alg] = process.argv.slice(1);
    const jwk = crypto.createPublicKey(fs.readFileSync(pemPath)).export({ format: "jwk" });
    jwk.kid = kid;
    if (alg !== "-") jwk.alg = alg;
    jwk.use = "sig";
    process.stdout.write(JSON.stringify({ keys: [jwk] }, null, 2) + "\n");
  ' "$1" "$2" "$3"
}

umask 077
for spec in "${specs[@]}"; do
  IFS='|' read -r name genargs alg <<<"${spec}"
  pem="${out}/${name}.pem"
  jwks="${out}/${name}.jwks.json"
  if [[ -e "${pem}" && "${force}" -eq 0 ]]; then
    echo "keep     ${pem#"${here}/"} (use --force to regenerate)"
  else
    # shellcheck disable=SC2086  # genargs is a deliberate word list
    openssl genpkey ${genargs} -out "${pem}.tmp" 2>/dev/null
    mv "${pem}.tmp" "${pem}"
    echo "generate ${pem#"${here}/"}"
  fi
  jwks_from_pem "${pem}" "${name}" "${alg}" >"${jwks}.tmp"
  mv "${jwks}.tmp" "${jwks}"
  chmod 0644 "${pem}" "${jwks}"   # committed test fixtures; readable on purpose
  echo "write    ${jwks#"${here}/"}"
done
