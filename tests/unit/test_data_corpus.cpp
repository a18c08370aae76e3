// Documents: the Brown corpus reader and its detokenisation, plain text files, tokenizing a
// document list.
#include <doctest/doctest.h>

#include <csignal>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <sys/stat.h>

#include "ablate/data/brown_corpus.hpp"
#include "ablate/data/documents.hpp"
#include "ablate/data/tokenized_corpus.hpp"

#include "data_test_util.hpp"

namespace {

using data_test::TempDir;
using data_test::error_of;
using data_test::contains;

namespace fs = std::filesystem;

// In the corpus's layout: blank lines between sentences, a tab before a paragraph's first one.
constexpr std::string_view kTagged =
    "\n\n"
    "Jury/nn-hl probes/vbz-hl vote/nn-hl \n"
    "\n\n"
    "\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' was/bedz found/vbn ./.\n"
    "It/pps cost/vbd $4,000/nns (/( 1-1/2/cd times/nns )/) ,/, Mr./np Pye/np Jr./np ./.\n"
    "\n\n"
    "\t``/`` Hello/uh ''/'' ,/, he/pps said/vbd ;/. '/' this/dt '/' is/bez it/pps --/-- ok/uh ?/.\n";

constexpr std::string_view kPlain =
    "Jury probes vote\n"
    "\n"
    "The jury said \"no evidence\" was found. It cost $4,000 (1-1/2 times), Mr. Pye Jr.\n"
    "\n"
    "\"Hello\", he said; 'this' is it -- ok?\n";

}  // namespace

TEST_CASE("data: Brown corpus detokenisation") {
  using ablate::data::brown_to_plain_text;
  CHECK(brown_to_plain_text(kTagged) == kPlain);
  // Sentences of one paragraph share it; a sentence after a headline starts a new one.
  CHECK(brown_to_plain_text("\tA/at b/nn ./.\nC/at d/nn !/.\n") == "A b. C d!\n");
  CHECK(brown_to_plain_text("Big/jj-hl news/nn-hl \nA/at b/nn ./.\n") == "Big news\n\nA b.\n");
  CHECK(brown_to_plain_text("x/nn .../. [/( y/nn ]/) 50/cd %/nn\n") == "x... [y] 50%\n");

  const std::string e1 = error_of([] { brown_to_plain_text("\tgood/jj bad\n", "cz99"); });
  CHECK(contains(e1, "cz99:1"));
  CHECK(contains(e1, "\"bad\" is not word/tag"));
  CHECK(contains(error_of([] { brown_to_plain_text("a/ b/nn\n", "f"); }), "\"a/\""));
  CHECK(contains(error_of([] { brown_to_plain_text("\n\n  \n", "empty"); }), "empty: no tagged text"));
}

TEST_CASE("data: load_brown_corpus reads the corpus files in name order") {
  using namespace ablate::data;
  CHECK(is_brown_file_name("ca01"));
  CHECK(is_brown_file_name("cr09"));
  CHECK_FALSE(is_brown_file_name("ci01"));  // there is no genre i
  CHECK_FALSE(is_brown_file_name("cats.txt"));
  CHECK(brown_genre('k') == "fiction");

  TempDir dir;
  dir.write("cb02", "\tThe/at end/nn ./.\n");
  dir.write("ca01", kTagged);
  dir.write("README", "not tagged at all");
  dir.write("cats.txt", "ca01 news\ncb02 editorial\n");
  const auto docs = load_brown_corpus(dir.path);
  REQUIRE(docs.size() == 2);
  CHECK(docs[0].name == "ca01");
  CHECK(docs[0].text == kPlain);
  CHECK(docs[1].name == "cb02");
  CHECK(docs[1].text == "The end.\n");

  const std::string missing = error_of([&] { load_brown_corpus(dir.path / "nope"); });
  CHECK(contains(missing, "nope"));
  CHECK(contains(missing, "does not exist"));
  CHECK_THROWS_AS(load_brown_corpus(dir.path / "nope"), io_error);

  TempDir empty;
  empty.write("README", "x");
  CHECK(contains(error_of([&] { load_brown_corpus(empty.path); }), "no Brown corpus files"));

  dir.write("cc03", "\tfine/jj ./.\nbroken\n");
  CHECK(contains(error_of([&] { load_brown_corpus(dir.path); }), "cc03:2"));
}

TEST_CASE("data: load_text_documents") {
  using namespace ablate::data;
  TempDir dir;
  const auto a = dir.write("a.txt", "first file\n");
  const auto b = dir.write("b.txt", "zweite Datei: \xC3\xBC\n");
  const auto docs = load_text_documents({b, a});
  REQUIRE(docs.size() == 2);
  CHECK(docs[0].name == b.string());
  CHECK(docs[0].text == "zweite Datei: \xC3\xBC\n");
  CHECK(docs[1].text == "first file\n");

  const auto bad = dir.write("latin1.txt", "caf\xE9\n");
  const std::string e = error_of([&] { load_text_documents({a, bad}); });
  CHECK(contains(e, "latin1.txt"));
  CHECK(contains(e, "not valid UTF-8"));
  CHECK(contains(e, "byte offset 3"));
  CHECK_THROWS_AS(load_text_documents({dir.path / "missing.txt"}), io_error);
  CHECK_THROWS_AS(load_text_documents({}), ablate::invalid_input);
}

TEST_CASE("data: read_file reads files and pipes, and refuses devices") {
  using namespace ablate::data;
  TempDir dir;
  CHECK(read_file(dir.write("empty.txt", "")).empty());
  const std::string bytes("a\0b\xFF", 4);
  CHECK(read_file(dir.write("bytes.bin", bytes)) == bytes);
  CHECK(contains(error_of([&] { read_file(dir.path); }), "it is a directory"));
  CHECK(contains(error_of([&] { read_file(dir.path / "none"); }), "no such file"));
  if (fs::exists("/dev/zero")) {  // would never end
    CHECK(contains(error_of([&] { read_file("/dev/zero"); }), "not a regular file or a pipe"));
  }
  if (fs::exists("/proc/self/status")) {  // a regular file that reports size 0
    CHECK(contains(read_file("/proc/self/status"), "Name:"));
  }
  if (fs::exists("/sys/kernel/mm/transparent_hugepage/enabled")) {  // reports 4096 bytes
    CHECK(contains(read_file("/sys/kernel/mm/transparent_hugepage/enabled"), "["));
  }
  fs::create_symlink("loop_b", dir.path / "loop_a");
  fs::create_symlink("loop_a", dir.path / "loop_b");
  const std::string loop = error_of([&] { read_file(dir.path / "loop_a"); });
  CHECK_FALSE(contains(loop, "no such file"));
  CHECK(contains(loop, "loop_a"));
  const fs::path fifo = dir.path / "pipe";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  const auto feed = [&](std::size_t bytes) {
    return std::thread(
        [&fifo, bytes] { std::ofstream(fifo, std::ios::binary) << std::string(bytes, 'x'); });
  };
  std::thread writer = feed(200000);  // several reads' worth
  CHECK(read_file(fifo) == std::string(200000, 'x'));
  writer.join();
  // One byte too many; the reader stops only after the writer has put everything in the pipe
  // (and a stopped reader would otherwise leave the writer to a SIGPIPE).
  const auto previous = std::signal(SIGPIPE, SIG_IGN);
  writer = feed(100001);
  const std::string e = error_of([&] { read_file(fifo, 100000); });
  writer.join();
  std::signal(SIGPIPE, previous);
  CHECK(contains(e, "more than 100000 bytes"));
}

namespace {

// One id per byte: enough to check how documents are put together.
struct ByteTokenizer {
  void encode_append(std::string_view text, std::vector<std::int32_t>& ids) const {
    for (const char c : text) {
      ablate::require(c != '!', "no '!' allowed");
      ids.push_back(static_cast<unsigned char>(c));
    }
  }
};

}  // namespace

TEST_CASE("data: tokenize_documents keeps document boundaries") {
  using namespace ablate::data;
  const std::vector<Document> docs = {{"one", "ab"}, {"two", ""}, {"three", "cde"}};
  const TokenizedCorpus corpus = tokenize_documents(ByteTokenizer{}, docs);
  CHECK(corpus.num_documents() == 3);
  CHECK(corpus.num_tokens() == 5);
  CHECK(corpus.offsets == std::vector<std::uint64_t>{0, 2, 2, 5});
  CHECK(corpus.document(2).size() == 3);
  CHECK(corpus.document(2)[0] == 'c');
  CHECK(corpus.document(1).empty());
  CHECK_THROWS_AS(corpus.document(3), ablate::invalid_input);
  CHECK_NOTHROW(corpus.validate("c", 256));
  CHECK(contains(error_of([&] { corpus.validate("c", 99); }), "token id 99 at position 2"));

  const std::vector<Document> bad = {{"fine", "x"}, {"loud", "hey!"}};
  CHECK(contains(error_of([&] { tokenize_documents(ByteTokenizer{}, bad); }), "document loud"));
}
