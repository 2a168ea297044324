// Strict, unpadded base64url encoding and decoding (RFC 4648 §5) for JWS and JWK members.
#include "smartbroker/jwks/base64url.hpp"

#include <array>
#include <cstdint>

namespace smartbroker::jwks {
namespace {

constexpr std::string_view kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
constexpr std::uint8_t kInvalid = 0xFF;

constexpr std::array<std::uint8_t, 256> makeDecodeTable() {
  std::array<std::uint8_t, 256> table{};
  table.fill(kInvalid);
  for (std::size_t i = 0; i < kAlphabet.size(); ++i) {
    table[static_cast<unsigned char>(kAlphabet[i])] = static_cast<std::uint8_t>(i);
  }
  return table;
}

constexpr std::array<std::uint8_t, 256> kDecodeTable = makeDecodeTable();

std::uint8_t sextet(char c) { return kDecodeTable[static_cast<unsigned char>(c)]; }

}  // namespace

std::string base64urlEncode(std::string_view bytes) {
  const std::size_t rest = bytes.size() % 3;
  std::string out(bytes.size() / 3 * 4 + (rest == 0 ? 0 : rest + 1), '\0');
  char* o = out.data();
  const auto byte = [&](std::size_t i) { return std::uint32_t{static_cast<unsigned char>(bytes[i])}; };
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const std::uint32_t v = (byte(i) << 16) | (byte(i + 1) << 8) | byte(i + 2);
    *o++ = kAlphabet[(v >> 18) & 0x3F];
    *o++ = kAlphabet[(v >> 12) & 0x3F];
    *o++ = kAlphabet[(v >> 6) & 0x3F];
    *o++ = kAlphabet[v & 0x3F];
  }
  if (rest == 1) {
    const std::uint32_t v = byte(i) << 16;
    *o++ = kAlphabet[(v >> 18) & 0x3F];
    *o++ = kAlphabet[(v >> 12) & 0x3F];
  } else if (rest == 2) {
    const std::uint32_t v = (byte(i) << 16) | (byte(i + 1) << 8);
    *o++ = kAlphabet[(v >> 18) & 0x3F];
    *o++ = kAlphabet[(v >> 12) & 0x3F];
    *o++ = kAlphabet[(v >> 6) & 0x3F];
  }
  return out;
}

std::optional<std::string> base64urlDecode(std::string_view text) {
  // A single leftover character carries only 6 bits, less than one byte: no encoder produces it.
  if (text.size() % 4 == 1) {
    return std::nullopt;
  }
  const std::size_t whole = text.size() / 4;
  const std::size_t rest = text.size() % 4;
  std::string out(whole * 3 + (rest == 0 ? 0 : rest - 1), '\0');
  char* o = out.data();
  // '=' is not in the table, so padding is refused along with every other foreign character.
  for (std::size_t q = 0; q < whole; ++q) {
    const char* in = text.data() + 4 * q;
    const std::uint32_t a = sextet(in[0]);
    const std::uint32_t b = sextet(in[1]);
    const std::uint32_t c = sextet(in[2]);
    const std::uint32_t d = sextet(in[3]);
    if ((a | b | c | d) > 0x3F) {  // a valid sextet is below 64, kInvalid is not
      return std::nullopt;
    }
    const std::uint32_t v = (a << 18) | (b << 12) | (c << 6) | d;
    *o++ = static_cast<char>(static_cast<unsigned char>(v >> 16));
    *o++ = static_cast<char>(static_cast<unsigned char>(v >> 8));
    *o++ = static_cast<char>(static_cast<unsigned char>(v));
  }
  if (rest != 0) {
    const char* in = text.data() + 4 * whole;
    std::uint32_t v = 0;
    for (std::size_t i = 0; i < rest; ++i) {
      const std::uint8_t x = sextet(in[i]);
      if (x == kInvalid) {
        return std::nullopt;
      }
      v = (v << 6) | x;
    }
    // Leftover bits must be zero; otherwise several spellings would decode to the same bytes, which
    // would let an attacker vary a signature's or a key's text without changing its meaning.
    if (rest == 2) {  // 12 bits: one byte and 4 spare bits
      if ((v & 0xF) != 0) {
        return std::nullopt;
      }
      *o++ = static_cast<char>(static_cast<unsigned char>(v >> 4));
    } else {  // 18 bits: two bytes and 2 spare bits
      if ((v & 0x3) != 0) {
        return std::nullopt;
      }
      *o++ = static_cast<char>(static_cast<unsigned char>(v >> 10));
      *o++ = static_cast<char>(static_cast<unsigned char>(v >> 2));
    }
  }
  return out;
}

}  // namespace smartbroker::jwks
