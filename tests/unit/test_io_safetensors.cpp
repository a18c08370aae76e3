// Safetensors format: byte layout checked by hand, round trips of every dtype, half-precision
// rounding, and hand-made corrupt files that must each be rejected with a message naming the
// problem.
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "ablate/data/atomic_file.hpp"
#include "ablate/io/safetensors.hpp"
#include "io_test_util.hpp"

namespace {

using ablate::invalid_input;
using ablate::data::io_error;
using ablate::io::Dtype;
using ablate::io::SafetensorsReader;
using ablate::io::SafetensorsWriter;
using io_test::file_bytes;

std::string le_bytes(const void* p, std::size_t n) {
  return std::string(static_cast<const char*>(p), n);
}

template <class T>
std::string le_values(const std::vector<T>& v) {
  return le_bytes(v.data(), v.size() * sizeof(T));  // the test machines are little-endian
}

SafetensorsReader parse(std::string bytes) {
  return SafetensorsReader::from_memory(std::move(bytes));
}

// A header with one tensor "t".
std::string one_tensor(const std::string& dtype, const std::string& shape,
                       const std::string& offsets) {
  return R"({"t":{"dtype":")" + dtype + R"(","shape":)" + shape + R"(,"data_offsets":)" + offsets +
         "}}";
}

}  // namespace

TEST_CASE("safetensors: writer output matches the format byte for byte") {
  SUBCASE("one F32 tensor: length, compact JSON in the package's field order, data") {
    SafetensorsWriter w;
    w.add("attn.0", Dtype::F32, {1, 2, 3}, std::vector<float>{0, 1, 2, 3, 4, 5});
    const std::string bytes = w.serialize();
    const std::string json = R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})";
    REQUIRE(json.size() == 64);  // already a multiple of 8: no padding
    CHECK(bytes == file_bytes(json, le_values(std::vector<float>{0, 1, 2, 3, 4, 5})));
    CHECK(bytes.substr(0, 8) == std::string("\x40\0\0\0\0\0\0\0", 8));
  }
  SUBCASE("metadata comes first and the header is padded with spaces to a multiple of 8") {
    SafetensorsWriter w;
    w.set_metadata("framework", "pt");
    const std::string json = R"({"__metadata__":{"framework":"pt"}})";
    REQUIRE(json.size() == 35);
    CHECK(w.serialize() == file_bytes(json + "     "));
  }
  SUBCASE("no tensors at all") { CHECK(SafetensorsWriter().serialize() == file_bytes("{}      ")); }
  SUBCASE("mixed dtypes: larger dtypes first, then by name; offsets contiguous and aligned") {
    SafetensorsWriter w;
    w.add("b", Dtype::I32, {3}, std::vector<std::int32_t>{1, -2, 3});
    w.add("c", Dtype::BF16, {3}, std::vector<float>{1.0f, -2.0f, 0.5f});
    w.add("a", Dtype::F64, {1}, std::vector<double>{2.5});
    w.add("d", Dtype::F32, {2}, std::vector<float>{-1.0f, 4.0f});
    w.add("e", Dtype::F32, {}, std::vector<float>{7.0f});
    const std::string bytes = w.serialize();
    const std::string json = R"({"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},)"
                             R"("d":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
                             R"("e":{"dtype":"F32","shape":[],"data_offsets":[16,20]},)"
                             R"("b":{"dtype":"I32","shape":[3],"data_offsets":[20,32]},)"
                             R"("c":{"dtype":"BF16","shape":[3],"data_offsets":[32,38]}})";
    const std::size_t padded = (json.size() + 7) / 8 * 8;
    const std::string data = le_values(std::vector<double>{2.5}) +
                             le_values(std::vector<float>{-1.0f, 4.0f, 7.0f}) +
                             le_values(std::vector<std::int32_t>{1, -2, 3}) +
                             le_values(std::vector<std::uint16_t>{0x3F80, 0xC000, 0x3F00});
    CHECK(bytes == file_bytes(json + std::string(padded - json.size(), ' '), data));
    CHECK(bytes.size() == 8 + padded + 38);
    // What the Python package checks on load: the header parses as JSON, and sorted by offset
    // the tensors tile the data buffer from 0 to its end.
    const auto header = nlohmann::json::parse(bytes.substr(8, padded));
    std::size_t end = 0;
    for (const char* name : {"a", "d", "e", "b", "c"}) {
      CHECK(header[name]["data_offsets"][0] == end);
      end = header[name]["data_offsets"][1];
    }
    CHECK(end == bytes.size() - 8 - padded);
  }
}

TEST_CASE("safetensors: every dtype round-trips through a file") {
  io_test::TempDir dir;
  const double inf = std::numeric_limits<double>::infinity();
  SafetensorsWriter w;
  // Values exact in each dtype, with the extremes of each.
  const std::vector<double> f64{0.0, -0.0, 1.0 / 3.0, -1e300, 5e-324, inf};
  const std::vector<float> f32{0.0f,
                               -1.5f,
                               3.14159274f,
                               std::numeric_limits<float>::max(),
                               std::numeric_limits<float>::denorm_min(),
                               -std::numeric_limits<float>::infinity()};
  const std::vector<double> bf16{
      0.0, -1.5, 0.15625, std::ldexp(1.9921875, 127), std::ldexp(1.0, -133), -inf};
  const std::vector<double> f16{0.0, -1.5, 0.333251953125, 65504.0, std::ldexp(1.0, -24), inf};
  const std::vector<std::int64_t> i64{0, -1, std::numeric_limits<std::int64_t>::min(),
                                      std::numeric_limits<std::int64_t>::max()};
  const std::vector<std::int32_t> i32{0, -1, std::numeric_limits<std::int32_t>::min(),
                                      std::numeric_limits<std::int32_t>::max()};
  const std::vector<std::int64_t> i16{0, -1, -32768, 32767};
  const std::vector<std::int64_t> i8{0, -1, -128, 127};
  const std::vector<std::uint64_t> u64{0, 1, std::numeric_limits<std::uint64_t>::max()};
  const std::vector<std::uint32_t> u32{0, 1, 4294967295u};
  const std::vector<int> u16{0, 1, 65535};
  const std::vector<int> u8{0, 1, 255};
  const std::vector<bool> flags{true, false, true};
  const bool flag_array[] = {true, false, true};
  w.add("f64", Dtype::F64, {2, 3}, f64);
  w.add("f32", Dtype::F32, {3, 2}, f32);
  w.add("bf16", Dtype::BF16, {6}, bf16);
  w.add("f16", Dtype::F16, {6, 1}, f16);
  w.add("i64", Dtype::I64, {4}, i64);
  w.add("i32", Dtype::I32, {2, 2}, i32);
  w.add("i16", Dtype::I16, {4}, i16);
  w.add("i8", Dtype::I8, {4}, i8);
  w.add("u64", Dtype::U64, {3}, u64);
  w.add("u32", Dtype::U32, {3}, u32);
  w.add("u16", Dtype::U16, {3}, u16);
  w.add("u8", Dtype::U8, {3}, u8);
  w.add_view("bool", Dtype::BOOL, {3}, flag_array);
  w.add("bool_vector", Dtype::BOOL, {3}, flags);  // std::vector<bool> has no span of its own
  w.add("empty", Dtype::F32, {0, 4}, std::vector<float>{});
  w.set_metadata("note", "round trip \xC3\xA9");  // UTF-8 survives
  w.write(dir / "all.safetensors");

  const auto r = SafetensorsReader::open(dir / "all.safetensors");
  CHECK(r.size() == 15);
  CHECK(*r.metadata_value("note") == "round trip \xC3\xA9");
  CHECK(r.at("f16").shape == std::vector<std::size_t>{6, 1});
  CHECK(r.at("f16").dtype == Dtype::F16);
  auto same_doubles = [](const std::vector<double>& a, const std::vector<double>& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
      if (std::bit_cast<std::uint64_t>(a[i]) != std::bit_cast<std::uint64_t>(b[i])) return false;
    return true;
  };
  CHECK(same_doubles(r.read<double>("f64"), f64));
  CHECK(r.read<float>("f32") == f32);
  CHECK(same_doubles(r.read<double>("bf16"), bf16));
  CHECK(same_doubles(r.read<double>("f16"), f16));
  CHECK(r.read<std::int64_t>("i64") == i64);
  CHECK(r.read<std::int32_t>("i32") == i32);
  CHECK(r.read<std::int64_t>("i16") == i16);
  CHECK(r.read<std::int64_t>("i8") == i8);
  CHECK(r.read<std::uint64_t>("u64") == u64);
  CHECK(r.read<std::uint32_t>("u32") == u32);
  CHECK(r.read<int>("u16") == u16);
  CHECK(r.read<int>("u8") == u8);
  CHECK(r.read<int>("bool") == std::vector<int>{1, 0, 1});
  CHECK(r.read<std::uint8_t>("bool") == std::vector<std::uint8_t>{1, 0, 1});
  CHECK(r.read<bool>("bool") == flags);
  CHECK(r.read<bool>("bool_vector") == flags);
  CHECK(r.read<int>("bool_vector") == std::vector<int>{1, 0, 1});
  CHECK(r.read<float>("empty").empty());
  // Conversions on load: integers to floating point, F64 to float (rounded once).
  CHECK(r.read<double>("i32") == std::vector<double>{0, -1, -2147483648.0, 2147483647.0});
  CHECK(r.read<float>("f64")[2] == static_cast<float>(1.0 / 3.0));
  // The same bytes through the in-memory reader.
  const auto m =
      SafetensorsReader::from_memory(ablate::data::read_file(dir / "all.safetensors"), "all");
  CHECK(m.read<std::int64_t>("i64") == i64);
  CHECK(m.read_bytes(m.at("i32")) == le_values(i32));
}

TEST_CASE("safetensors: BF16 and F16 round to nearest, ties to even") {
  using ablate::io::from_bf16_bits;
  using ablate::io::from_f16_bits;
  using ablate::io::to_bf16_bits;
  using ablate::io::to_f16_bits;
  // Every bit pattern decodes and re-encodes to itself (NaNs stay NaN).
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    const double h = from_f16_bits(bits), bf = from_bf16_bits(bits);
    if (std::isnan(h)) {
      CHECK(std::isnan(from_f16_bits(to_f16_bits(h))));
    } else if (to_f16_bits(h) != bits) {
      FAIL("F16 pattern ", b, " does not round-trip");
    }
    if (std::isnan(bf)) {
      CHECK(std::isnan(from_bf16_bits(to_bf16_bits(bf))));
    } else if (to_bf16_bits(bf) != bits) {
      FAIL("BF16 pattern ", b, " does not round-trip");
    }
  }
  // F16: ties go to the even neighbour, overflow goes to infinity, underflow to zero.
  CHECK(to_f16_bits(1.0) == 0x3C00);
  CHECK(to_f16_bits(1.0 + std::ldexp(1.0, -11)) == 0x3C00);      // tie, 0x3C00 is even
  CHECK(to_f16_bits(1.0 + 3 * std::ldexp(1.0, -11)) == 0x3C02);  // tie, 0x3C02 is even
  CHECK(to_f16_bits(1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -30)) == 0x3C01);  // above the tie
  CHECK(to_f16_bits(65504.0) == 0x7BFF);
  CHECK(to_f16_bits(65519.99) == 0x7BFF);
  CHECK(to_f16_bits(65520.0) == 0x7C00);  // tie between 65504 (odd) and 65536 (infinity)
  CHECK(to_f16_bits(-1e10) == 0xFC00);
  CHECK(to_f16_bits(std::ldexp(1.0, -24)) == 0x0001);  // smallest subnormal
  CHECK(to_f16_bits(std::ldexp(1.0, -25)) == 0x0000);  // tie with zero
  CHECK(to_f16_bits(std::ldexp(1.0, -25) * (1 + 1e-9)) == 0x0001);
  CHECK(to_f16_bits(std::ldexp(3.0, -25)) == 0x0002);     // 1.5 steps: tie, to 2
  CHECK(to_f16_bits(std::ldexp(1023.5, -24)) == 0x0400);  // carries into the smallest normal
  CHECK(to_f16_bits(-0.0) == 0x8000);
  CHECK(to_f16_bits(1e-300) == 0x0000);
  CHECK(to_f16_bits(std::numeric_limits<double>::denorm_min()) == 0x0000);
  CHECK((to_f16_bits(std::nan("")) & 0x7C00) == 0x7C00);
  CHECK((to_f16_bits(std::nan("")) & 0x03FF) != 0);
  // BF16.
  CHECK(to_bf16_bits(1.0) == 0x3F80);
  CHECK(to_bf16_bits(1.0 + std::ldexp(1.0, -8)) == 0x3F80);      // tie to even
  CHECK(to_bf16_bits(1.0 + 3 * std::ldexp(1.0, -8)) == 0x3F82);  // tie to even
  CHECK(to_bf16_bits(-2.0) == 0xC000);
  CHECK(to_bf16_bits(std::numeric_limits<double>::infinity()) == 0x7F80);
  CHECK(to_bf16_bits(1e39) == 0x7F80);
  // float -> BF16 agrees with the usual bit trick, which is exact for floats, over a sweep of
  // float patterns (single rounding straight from the value: no double rounding via float).
  for (std::uint64_t b = 0; b < (std::uint64_t{1} << 32); b += 4093) {
    const auto bits = static_cast<std::uint32_t>(b);
    const float f = std::bit_cast<float>(bits);
    if (std::isnan(f)) continue;
    const auto expected = static_cast<std::uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    if (to_bf16_bits(f) != expected) FAIL("float pattern ", bits, " rounds to BF16 wrongly");
  }
#if defined(__FLT16_MAX__)
  for (std::uint64_t b = 0; b < (std::uint64_t{1} << 32); b += 4093) {
    const float f = std::bit_cast<float>(static_cast<std::uint32_t>(b));
    if (std::isnan(f)) continue;
    const auto expected = std::bit_cast<std::uint16_t>(static_cast<_Float16>(f));
    if (to_f16_bits(f) != expected) FAIL("float pattern ", b, " rounds to F16 wrongly");
  }
#endif
  const double inf = std::numeric_limits<double>::infinity();
  // The writer uses the same rounding, but refuses a finite value that would become infinite
  // (an infinity itself stays one).
  SafetensorsWriter w;
  w.add("h", Dtype::F16, {3}, std::vector<double>{1.0 + std::ldexp(1.0, -11), 65519.0, -inf});
  const auto r = parse(w.serialize());
  CHECK(r.read_bytes(r.at("h")) == le_values(std::vector<std::uint16_t>{0x3C00, 0x7BFF, 0xFC00}));
  CHECK_THROWS_WITH_AS(w.add("big", Dtype::F16, {2}, std::vector<float>{1.0f, -65520.0f}),
                       doctest::Contains("tensor 'big': element 1 = -65520 is finite but overflows F16"),
                       invalid_input);
  CHECK_THROWS_WITH_AS(w.add("big", Dtype::BF16, {1}, std::vector<double>{1e300}),
                       doctest::Contains("overflows BF16"), invalid_input);
  CHECK_THROWS_WITH_AS(w.add("big", Dtype::F32, {1}, std::vector<double>{-1e39}),
                       doctest::Contains("overflows F32"), invalid_input);
  CHECK(w.size() == 1);
}

TEST_CASE("safetensors: corrupt files are rejected with a message naming the problem") {
  const std::string f32x6 = std::string(24, '\0');
  auto rejects = [](const std::string& bytes, const char* needle) {
    CAPTURE(needle);
    CHECK_THROWS_WITH_AS(parse(bytes), doctest::Contains(needle), invalid_input);
  };
  SUBCASE("too short for the length prefix") {
    rejects("", "too short");
    rejects("\x08\0\0", "too short");
  }
  SUBCASE("header length larger than the file (truncated header)") {
    const std::string header = one_tensor("F32", "[2,3]", "[0,24]");
    rejects(file_bytes(header, f32x6).substr(0, 30), "truncated");
    rejects(file_bytes("{}", "", 1000), "exceeds the 2 bytes after the length prefix");
  }
  SUBCASE("a NUL byte or a byte-order mark in the header (the JSON parser would stop at one and skip the other)") {
    rejects(file_bytes(std::string("{}\0{{{ garbage", 15)), "the header holds a NUL byte");
    rejects(file_bytes("\xEF\xBB\xBF{}"), "the header starts with a byte-order mark");
  }
  SUBCASE("absurd header length") {
    rejects(file_bytes("{}", "", std::uint64_t{1} << 60), "exceeds the limit of 100000000 bytes");
    rejects(file_bytes("{}", "", UINT64_MAX - 1), "exceeds the limit");
  }
  SUBCASE("a BOOL byte other than 0 or 1 is refused on reading, as any type") {
    const auto r = parse(file_bytes(one_tensor("BOOL", "[3]", "[0,3]"), std::string("\x01\x00\x02", 3)));
    for (auto read : {+[](const SafetensorsReader& f) { (void)f.read<bool>("t"); },
                      +[](const SafetensorsReader& f) { (void)f.read<int>("t"); },
                      +[](const SafetensorsReader& f) { (void)f.read<float>("t"); }})
      CHECK_THROWS_WITH_AS(read(r), doctest::Contains("element 2 is byte 2, not a BOOL (0 or 1)"),
                           invalid_input);
  }
  SUBCASE("truncated data") {
    rejects(file_bytes(one_tensor("F32", "[2,3]", "[0,24]"), f32x6.substr(0, 10)),
            "run past the end of the data buffer");
  }
  SUBCASE("offsets past the end") {
    rejects(file_bytes(one_tensor("F32", "[12]", "[0,48]"), f32x6), "file truncated?");
    rejects(
        file_bytes(one_tensor("F32", "[1]", "[18446744073709551611,18446744073709551615]"), f32x6),
        "run past the end");
  }
  SUBCASE("overlapping, gapped and unordered offsets") {
    const std::string data(12, '\0');
    rejects(file_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                       data),
            "tensor 'b': data_offsets [4, 12] overlap tensor 'a' [0, 8]");
    rejects(file_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                       R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                       data),
            "gap");
    rejects(file_bytes(one_tensor("F32", "[1]", "[4,8]"), std::string(8, '\0')), "gap");
    rejects(file_bytes(one_tensor("F32", "[2]", "[8,0]"), std::string(8, '\0')),
            "end before they begin");
    rejects(file_bytes(one_tensor("F32", "[1]", "[0,4]"), std::string(8, '\0')), "trailing bytes");
  }
  SUBCASE("byte count does not match shape and dtype") {
    rejects(file_bytes(one_tensor("F32", "[2,2]", "[0,12]"), std::string(12, '\0')),
            "tensor 't': data_offsets [0, 12] hold 12 bytes but F32 shape [2, 2] needs 16");
    rejects(file_bytes(one_tensor("BF16", "[3]", "[0,12]"), std::string(12, '\0')), "needs 6");
  }
  SUBCASE("integer overflow in the shape product") {
    rejects(file_bytes(one_tensor("F32", "[4294967296,4294967296,4]", "[0,0]")), "overflow");
    rejects(file_bytes(one_tensor("F64", "[2305843009213693952]", "[0,0]")), "overflow");
    rejects(file_bytes(one_tensor("F32", "[18446744073709551616]", "[0,0]")),
            "non-negative integers");
  }
  SUBCASE("NaN, fractional, negative or non-numeric sizes") {
    rejects(file_bytes(one_tensor("F32", "[NaN]", "[0,4]"), "1234"), "not valid JSON");
    rejects(file_bytes(one_tensor("F32", "[1.5]", "[0,4]"), "1234"),
            "shape must hold non-negative integers, got 1.5");
    rejects(file_bytes(one_tensor("F32", "[-1]", "[0,4]"), "1234"),
            "non-negative integers, got -1");
    rejects(file_bytes(one_tensor("F32", "[\"1\"]", "[0,4]"), "1234"),
            "non-negative integers, got a string");
    rejects(file_bytes(one_tensor("F32", "[[1]]", "[0,4]"), "1234"),
            "non-negative integers, got an array");
    rejects(file_bytes(one_tensor("F32", "[1]", "[0,4.0]"), "1234"),
            "data_offsets must hold non-negative integers");
    rejects(file_bytes(one_tensor("F32", "[1]", "[0,4,4]"), "1234"), "exactly 2 integers");
    rejects(file_bytes(one_tensor("F32", "[1]", "[0]"), "1234"), "exactly 2 integers");
    rejects(file_bytes(one_tensor("F32", "1", "[0,4]"), "1234"),
            "field 'shape' has the wrong type");
  }
  SUBCASE("bad JSON") {
    rejects(file_bytes(R"({"t":)"), "not valid JSON");
    rejects(file_bytes(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} x)", "1234"),
            "not valid JSON");
    rejects(file_bytes("{\"\xFF\":{}}"), "not valid JSON");  // not UTF-8
    rejects(file_bytes("        "), "not valid JSON");
  }
  SUBCASE("header is not a JSON object") {
    rejects(file_bytes("[1,2]"), "the header must be a JSON object, got an array");
    rejects(file_bytes("\"t\""), "must be a JSON object, got a string");
    rejects(file_bytes("12"), "must be a JSON object, got a number");
    rejects(file_bytes(R"({"t":3})"), "tensor 't' must be an object, got a number");
    rejects(file_bytes(R"({"__metadata__":[]})"), "__metadata__ must be an object of strings");
    rejects(file_bytes(R"({"__metadata__":{"k":1}})"),
            "__metadata__ value of 'k' must be a string, got a number");
  }
  SUBCASE("unknown dtype, missing or unknown fields") {
    rejects(file_bytes(one_tensor("F12", "[1]", "[0,4]"), "1234"),
            "tensor 't': unknown dtype 'F12'");
    rejects(file_bytes(R"({"t":{"dtype":"F32","data_offsets":[0,4]}})", "1234"),
            "tensor 't' lacks shape");
    rejects(file_bytes(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", "1234"),
            "tensor 't': unknown field 'x'");
  }
  SUBCASE("duplicate keys") {
    const std::string t = R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
    rejects(file_bytes("{\"t\":" + t + ",\"t\":" + t + "}", "1234"), "duplicate key 't'");
    rejects(file_bytes(R"({"t":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                       "1234"),
            "tensor 't': duplicate field 'dtype'");
    rejects(file_bytes(R"({"__metadata__":{"a":"1","a":"2"}})"), "duplicate __metadata__ key 'a'");
    rejects(file_bytes(R"({"__metadata__":{},"__metadata__":{}})"), "duplicate key '__metadata__'");
  }
  SUBCASE("messages name the source") {
    CHECK_THROWS_WITH_AS(SafetensorsReader::from_memory(file_bytes("[]"), "weights.bin"),
                         doctest::Contains("weights.bin: invalid safetensors header"),
                         invalid_input);
  }
}

TEST_CASE("safetensors: hand-made valid files parse") {
  // Keys in any order, metadata null, zero-sized tensors, whitespace padding.
  const std::string header =
      R"({"b":{"shape":[2],"data_offsets":[4,12],"dtype":"F32"}, "__metadata__":null,)"
      R"( "a":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}, "z":{"dtype":"F16","shape":[0,3],"data_offsets":[12,12]}}   )";
  const std::int32_t a = -7;
  const float b[2] = {0.5f, -2.0f};
  const auto r = parse(file_bytes(header, le_bytes(&a, 4) + le_bytes(b, 8)));
  REQUIRE(r.size() == 3);
  CHECK(r.tensors()[0].name == "a");  // sorted by offset
  CHECK(r.metadata().empty());
  CHECK(r.read<std::int64_t>("a") == std::vector<std::int64_t>{-7});
  CHECK(r.read<double>("b") == std::vector<double>{0.5, -2.0});
  CHECK(r.read<float>("z").empty());
  CHECK(r.find("missing") == nullptr);
  CHECK_THROWS_WITH_AS(r.at("missing"), doctest::Contains("no tensor named 'missing'"),
                       invalid_input);
}

TEST_CASE("safetensors: conversion and writer errors") {
  SafetensorsWriter w;
  w.add("big", Dtype::I64, {2}, std::vector<std::int64_t>{1, std::int64_t{1} << 40});
  w.add("neg", Dtype::I8, {1}, std::vector<int>{-3});
  w.add("f", Dtype::F32, {1}, std::vector<float>{1.0f});
  const auto r = parse(w.serialize());
  CHECK_THROWS_WITH_AS(r.read<std::int32_t>("big"),
                       doctest::Contains("element 1 = 1099511627776 does not fit"), invalid_input);
  CHECK_THROWS_WITH_AS(r.read<std::uint32_t>("neg"),
                       doctest::Contains("element 0 = -3 does not fit"), invalid_input);
  CHECK_THROWS_WITH_AS(r.read<int>("f"),
                       doctest::Contains("has dtype F32, which cannot be read as integers"),
                       invalid_input);
  std::vector<float> two(2);
  CHECK_THROWS_WITH_AS(r.read(r.at("f"), std::span<float>(two)),
                       doctest::Contains("has 1 elements"), invalid_input);

  CHECK_THROWS_WITH_AS(w.add("f", Dtype::F32, {1}, std::vector<float>{1.0f}),
                       doctest::Contains("added twice"), invalid_input);
  CHECK_THROWS_WITH_AS(w.add("", Dtype::F32, {1}, std::vector<float>{1.0f}),
                       doctest::Contains("empty"), invalid_input);
  CHECK_THROWS_WITH_AS(w.add("__metadata__", Dtype::F32, {1}, std::vector<float>{1.0f}),
                       doctest::Contains("reserved"), invalid_input);
  CHECK_THROWS_WITH_AS(w.add("x", Dtype::F32, {2, 2}, std::vector<float>{1.0f}),
                       doctest::Contains("1 values given for shape [2, 2] (4 elements)"),
                       invalid_input);
  CHECK_THROWS_WITH_AS(w.add("x", Dtype::I32, {1}, std::vector<float>{1.0f}),
                       doctest::Contains("floating-point values cannot be stored as I32"),
                       invalid_input);
  CHECK_THROWS_WITH_AS(w.add("x", Dtype::F32, {1}, std::vector<int>{1}),
                       doctest::Contains("integer values cannot be stored as F32"), invalid_input);
  CHECK_THROWS_WITH_AS(w.add("x", Dtype::F8_E4M3, {1}, std::vector<float>{1.0f}),
                       doctest::Contains("not supported"), invalid_input);
  CHECK_THROWS_WITH_AS(w.add("x", Dtype::I8, {1}, std::vector<int>{200}),
                       doctest::Contains("200 does not fit in I8"), invalid_input);
  CHECK_THROWS_WITH_AS(w.add("bad\xFF", Dtype::F32, {1}, std::vector<float>{1.0f}),
                       doctest::Contains("UTF-8"), invalid_input);
  CHECK_THROWS_WITH_AS(w.add_raw("x", Dtype::F32, {2}, std::string(7, '\0')),
                       doctest::Contains("7 bytes given, 8 needed"), invalid_input);
  CHECK_THROWS_WITH_AS(w.add("x", Dtype::F32, {std::size_t{1} << 62, 8}, std::vector<float>{}),
                       doctest::Contains("too large"), invalid_input);
  CHECK(w.size() == 3);  // failed adds leave nothing behind

  // A header over the readers' limit is refused when written, not when read back.
  SafetensorsWriter huge;
  huge.set_metadata("notes", std::string(ablate::io::kMaxHeaderBytes, 'x'));
  io_test::TempDir dir;
  CHECK_THROWS_WITH_AS(huge.write(dir / "huge.safetensors"),
                       doctest::Contains("over the format's limit of 100000000"), invalid_input);
  CHECK(dir.listing().empty());
}

TEST_CASE("safetensors: F8 dtypes decode") {
  // F8_E4M3 (float8_e4m3fn): no infinities, 0x7F is NaN, 0x7E = 448.  F8_E5M2 is half's top byte.
  const std::string data(
      "\x7E\x7F\x01\x38"
      "\x3C\x7C\x01\xC0",
      8);
  const auto r = parse(file_bytes(R"({"a":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]},)"
                                  R"("b":{"dtype":"F8_E5M2","shape":[4],"data_offsets":[4,8]}} )",
                                  data));
  const auto a = r.read<double>("a");
  CHECK(a[0] == 448.0);
  CHECK(std::isnan(a[1]));
  CHECK(a[2] == std::ldexp(1.0, -9));
  CHECK(a[3] == 1.0);
  const auto b = r.read<double>("b");
  CHECK(b[0] == 1.0);
  CHECK(std::isinf(b[1]));
  CHECK(b[2] == std::ldexp(1.0, -16));
  CHECK(b[3] == -2.0);
}

TEST_CASE("safetensors: writes are atomic") {
  io_test::TempDir dir;
  const auto target = dir / "w.safetensors";
  SafetensorsWriter good;
  good.add("x", Dtype::F32, {3}, std::vector<float>{1, 2, 3});
  good.write(target);
  const std::string before = ablate::data::read_file(target);

  SUBCASE("a failure in the middle of the data leaves the old file and no temporary") {
    // 2.4 MB of F64 goes out first (past the writer's buffer, so onto the disk), then the I32
    // view fails on an element that does not fit.
    const std::vector<double> big(300000, 0.5);
    const std::vector<std::int64_t> bad{1, std::int64_t{1} << 40};
    SafetensorsWriter w;
    w.add_view("big", Dtype::F64, {big.size()}, big.data());
    w.add_view("bad", Dtype::I32, {2}, bad.data());
    CHECK_THROWS_WITH_AS(w.write(target), doctest::Contains("does not fit in I32"), invalid_input);
    CHECK(ablate::data::read_file(target) == before);
    CHECK(dir.listing() == "w.safetensors\n");
  }
  SUBCASE("a full disk leaves the old file and no temporary, and says why") {
    const std::vector<float> big(300000, 0.5f);  // 1.2 MB: past the writer's buffer
    SafetensorsWriter w;
    w.add_view("big", Dtype::F32, {big.size()}, big.data());
    const std::string small(5000, 'x');
    const std::string unchanged = " (the previous file, if any, is unchanged)";
    std::string streamed, buffered, fresh, again;
    {
      io_test::FileSizeLimit full(4096);
      streamed = io_test::io_error_of([&] { w.write(target); });
      buffered = io_test::io_error_of([&] { ablate::data::write_file_atomically(target, small); });
      fresh = io_test::io_error_of([&] { ablate::data::write_file_atomically(dir / "new", small); });
      ablate::data::write_file_atomically(dir / "fits", small.substr(0, 4096));
      again = io_test::io_error_of([&] {
        ablate::data::AtomicFileWriter out(dir / "new");
        try {
          out.write(big.data(), sizeof(float) * big.size());
        } catch (const io_error&) {
        }
        out.commit();
      });
    }
    CHECK(streamed == "cannot write " + target.string() + ": File too large" + unchanged);
    CHECK(buffered == "cannot write " + target.string() + ": File too large" + unchanged);
    CHECK(fresh == "cannot write " + (dir / "new").string() + ": File too large" + unchanged);
    CHECK(again == "AtomicFileWriter: " + (dir / "new").string() + ": an earlier write failed");
    CHECK(ablate::data::read_file(target) == before);
    CHECK(ablate::data::read_file(dir / "fits") == small.substr(0, 4096));
    CHECK(dir.listing() == "fits\nw.safetensors\n");
    w.write(target);  // room again
    CHECK(SafetensorsReader::open(target).read<float>("big") == big);
  }
  SUBCASE("no file descriptor left: the error names the target and the reason") {
    std::string message;
    {
      io_test::ResourceLimit no_files(RLIMIT_NOFILE, 0);
      message = io_test::io_error_of([&] { ablate::data::write_file_atomically(target, "x"); });
    }
    CHECK(message.starts_with("cannot write " + target.string() +
                              ": cannot create a temporary file beside it (w.safetensors.tmp-"));
    CHECK(message.ends_with("): Too many open files (the previous file, if any, is unchanged)"));
    CHECK(ablate::data::read_file(target) == before);
    CHECK(dir.listing() == "w.safetensors\n");
  }
  SUBCASE("a directory that cannot be created") {
    ablate::data::write_file_atomically(dir / "file", "x");
    CHECK_THROWS_AS(good.write(dir / "file" / "sub" / "w.safetensors"), io_error);
  }
  SUBCASE("a target that is not a regular file is refused, not replaced") {
    namespace fs = std::filesystem;
    fs::create_directories(dir / "occupied" / "child");
    CHECK_THROWS_WITH_AS(good.write(dir / "occupied"),
                         doctest::Contains("occupied: it is a directory, which an atomic write would replace"),
                         io_error);
    CHECK_THROWS_WITH_AS(ablate::data::write_file_atomically(dir / "occupied", "x"),
                         doctest::Contains("it is a directory"), io_error);
    CHECK(fs::is_directory(dir / "occupied" / "child"));
    REQUIRE(::mkfifo((dir / "fifo").c_str(), 0600) == 0);
    CHECK_THROWS_WITH_AS(good.write(dir / "fifo"),
                         doctest::Contains("fifo: it is not a regular file (a device or a pipe?)"),
                         io_error);
    CHECK_THROWS_WITH_AS(ablate::data::write_file_atomically(dir / "fifo", "x"),
                         doctest::Contains("not a regular file"), io_error);
    CHECK(fs::is_fifo(dir / "fifo"));
    CHECK(dir.listing() == "fifo\noccupied\nw.safetensors\n");
  }
  SUBCASE("a symbolic link stays a link: the file it names is replaced") {
    namespace fs = std::filesystem;
    fs::create_symlink("w.safetensors", dir / "latest");
    SafetensorsWriter w;
    w.add("y", Dtype::F32, {1}, std::vector<float>{2.0f});
    w.write(dir / "latest");
    CHECK(fs::is_symlink(fs::symlink_status(dir / "latest")));
    CHECK(SafetensorsReader::open(target).find("y") != nullptr);
    ablate::data::write_file_atomically(dir / "latest", before);
    CHECK(fs::is_symlink(fs::symlink_status(dir / "latest")));
    CHECK(ablate::data::read_file(target) == before);
    CHECK(dir.listing() == "latest\nw.safetensors\n");
    // A link to a file not written yet: the file appears under the name the link gives.
    fs::create_symlink("new.safetensors", dir / "next");
    ablate::data::write_file_atomically(dir / "next", "x");
    CHECK(fs::is_symlink(fs::symlink_status(dir / "next")));
    CHECK(ablate::data::read_file(dir / "new.safetensors") == "x");
    fs::create_symlink("loop", dir / "loop");
    CHECK_THROWS_WITH_AS(ablate::data::write_file_atomically(dir / "loop", "x"),
                         doctest::Contains("cannot follow the link"), io_error);
  }
  SUBCASE("a successful write replaces the file") {
    SafetensorsWriter w;
    w.add("y", Dtype::F16, {1}, std::vector<float>{2.0f});
    w.write(target);
    CHECK(SafetensorsReader::open(target).find("y") != nullptr);
    CHECK(dir.listing() == "w.safetensors\n");
  }
  SUBCASE("a replaced file keeps its permissions") {
    namespace fs = std::filesystem;
    fs::permissions(target, fs::perms::owner_read | fs::perms::owner_write);
    good.write(target);
    CHECK(fs::status(target).permissions() == (fs::perms::owner_read | fs::perms::owner_write));
    ablate::data::write_file_atomically(target, before);
    CHECK(fs::status(target).permissions() == (fs::perms::owner_read | fs::perms::owner_write));
  }
  SUBCASE("a target name near the file system's limit (255 bytes) still has room for the temporary") {
    const std::string name = std::string(240, 'n') + ".safetensors";
    good.write(dir / name);
    CHECK(ablate::data::read_file(dir / name) == before);
    ablate::data::write_file_atomically(dir / name, "x");
    CHECK(ablate::data::read_file(dir / name) == "x");
    CHECK(dir.listing() == name + "\nw.safetensors\n");
  }
  SUBCASE("reading a missing file or a directory is an I/O error") {
    CHECK_THROWS_WITH_AS(SafetensorsReader::open(dir / "nope"), doctest::Contains("no such file"),
                         io_error);
    CHECK_THROWS_AS(SafetensorsReader::open(dir.path()), io_error);
  }
  SUBCASE("a truncated file on disk") {
    ablate::data::write_file_atomically(dir / "cut", before.substr(0, before.size() - 1));
    CHECK_THROWS_WITH_AS(SafetensorsReader::open(dir / "cut"), doctest::Contains("file truncated?"),
                         invalid_input);
    ablate::data::write_file_atomically(dir / "cut", before.substr(0, 20));
    CHECK_THROWS_WITH_AS(SafetensorsReader::open(dir / "cut"), doctest::Contains("truncated file?"),
                         invalid_input);
  }
}
