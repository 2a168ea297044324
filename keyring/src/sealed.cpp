// Encryption at rest of private key files with the key-encryption key (AES-256-GCM, OpenSSL EVP).
#include "sealed.hpp"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <array>
#include <memory>
#include <stdexcept>

namespace smartbroker::keyring::sealed {
namespace {

using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)>;

constexpr std::string_view kMagic = "SBKEYv1\n";  // versioned, so that a later format can be told apart
constexpr std::size_t kNonceBytes = 12;          // the GCM standard nonce size (NIST SP 800-38D)
constexpr std::size_t kTagBytes = 16;

const unsigned char* bytes(std::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); }
unsigned char* bytes(std::string& s) { return reinterpret_cast<unsigned char*>(s.data()); }

std::string aad(std::string_view kid) {
  std::string out(kMagic);
  out += kid;
  return out;
}

/// One GCM operation up to (not including) the tag; `encrypt` selects the direction.
bool gcm(EVP_CIPHER_CTX* ctx, bool encrypt, std::string_view kek, std::string_view nonce, std::string_view kid,
         std::string_view in, std::string& out) {
  const int enc = encrypt ? 1 : 0;
  int len = 0;
  const std::string additional = aad(kid);
  out.assign(in.size(), '\0');
  if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), nullptr, nullptr, nullptr, enc) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, static_cast<int>(nonce.size()), nullptr) != 1 ||
      EVP_CipherInit_ex(ctx, nullptr, nullptr, bytes(kek), bytes(nonce), enc) != 1 ||
      EVP_CipherUpdate(ctx, nullptr, &len, bytes(additional), static_cast<int>(additional.size())) != 1) {
    return false;
  }
  if (!in.empty() && EVP_CipherUpdate(ctx, bytes(out), &len, bytes(in), static_cast<int>(in.size())) != 1) {
    return false;
  }
  return true;
}

}  // namespace

bool isSealed(std::string_view data) { return data.starts_with(kMagic); }

std::string seal(std::string_view plaintext, std::string_view kek, std::string_view kid) {
  if (kek.size() != kKekBytes) {
    throw std::invalid_argument("key-encryption key must be 32 bytes");
  }
  // A fresh random nonce per file: a key file is sealed once per key, so 96 random bits never repeat in practice.
  std::string nonce(kNonceBytes, '\0');
  if (RAND_bytes(bytes(nonce), static_cast<int>(nonce.size())) != 1) {
    ERR_clear_error();
    throw std::runtime_error("no random bytes for a nonce");
  }
  CipherCtx ctx(EVP_CIPHER_CTX_new(), &EVP_CIPHER_CTX_free);
  std::string ciphertext;
  int len = 0;
  std::string tag(kTagBytes, '\0');
  std::array<unsigned char, 16> scratch{};  // GCM's final step writes nothing, but gets a buffer all the same
  if (!ctx || !gcm(ctx.get(), true, kek, nonce, kid, plaintext, ciphertext) ||
      EVP_EncryptFinal_ex(ctx.get(), scratch.data(), &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, static_cast<int>(kTagBytes), tag.data()) != 1) {
    ERR_clear_error();
    throw std::runtime_error("AES-256-GCM encryption failed");
  }
  std::string out(kMagic);
  out += nonce;
  out += ciphertext;
  out += tag;
  return out;
}

std::expected<std::string, std::string> open(std::string_view sealedData, std::string_view kek, std::string_view kid) {
  if (kek.size() != kKekBytes) {
    return std::unexpected("the key-encryption key must be 32 bytes");
  }
  if (!isSealed(sealedData) || sealedData.size() < kMagic.size() + kNonceBytes + kTagBytes) {
    return std::unexpected("not an encrypted smart-broker key file");
  }
  const std::string_view nonce = sealedData.substr(kMagic.size(), kNonceBytes);
  const std::string_view body = sealedData.substr(kMagic.size() + kNonceBytes);
  const std::string_view ciphertext = body.substr(0, body.size() - kTagBytes);
  std::string tag(body.substr(body.size() - kTagBytes));
  CipherCtx ctx(EVP_CIPHER_CTX_new(), &EVP_CIPHER_CTX_free);
  std::string plaintext;
  int len = 0;
  std::array<unsigned char, 16> scratch{};
  const bool ok = ctx && gcm(ctx.get(), false, kek, nonce, kid, ciphertext, plaintext) &&
                  EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, static_cast<int>(kTagBytes), tag.data()) == 1 &&
                  EVP_DecryptFinal_ex(ctx.get(), scratch.data(), &len) == 1;
  ERR_clear_error();
  if (!ok) {
    // Why: the plaintext of a failed tag check is unauthenticated; wipe it rather than hand any of it back.
    OPENSSL_cleanse(plaintext.data(), plaintext.size());
    return std::unexpected("cannot decrypt: wrong key-encryption key, or the file was altered");
  }
  return plaintext;
}

}  // namespace smartbroker::keyring::sealed
