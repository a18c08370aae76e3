// Documents: named pieces of UTF-8 text, the unit that data splits keep together.
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "ablate/core/error.hpp"
#include "ablate/data/file_io.hpp"
#include "ablate/data/utf8.hpp"

namespace ablate::data {

struct Document {
  std::string name;  // e.g. the corpus file name
  std::string text;  // UTF-8
};

// One document per file, in the order given, named by the path as given and holding the file's
// bytes unchanged (no newline or byte-order-mark handling). Throws io_error for a file that
// cannot be read and invalid_input for one that is not UTF-8 or an empty list.
inline std::vector<Document> load_text_documents(const std::vector<std::filesystem::path>& paths) {
  require(!paths.empty(), "load_text_documents: no files given");
  std::vector<Document> documents;
  documents.reserve(paths.size());
  for (const auto& path : paths) {
    Document doc{path.string(), read_file(path)};
    utf8::require_valid(doc.text, "text file " + doc.name);
    documents.push_back(std::move(doc));
  }
  return documents;
}

}  // namespace ablate::data
