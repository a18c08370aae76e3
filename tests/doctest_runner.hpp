// doctest's main with one check added: a run whose filters select no test case fails.  CTest
// runs each test case by name (--test-case=NAME); a name that does not survive the trip through
// CMake (a ';' splits it into two list items) selects nothing, and doctest alone would report
// such a run as passed.  Include once, in the runner's main file.
#pragma once

#include <doctest/doctest.h>

#include <cstdio>

namespace ablate_test {

// What the last run did: answered a query (--help, --version, --list-*), and how many test
// cases passed the filters (doctest reports it at the run's end).
struct RunRecord {
  bool query = false;
  unsigned selected = 0;
};
inline RunRecord& run_record() {
  static RunRecord record;
  return record;
}

struct SelectionListener : doctest::IReporter {
  explicit SelectionListener(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override { run_record().query = true; }
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats& stats) override {
    run_record().selected = stats.numTestCasesPassingFilters;
  }
  void test_case_start(const doctest::TestCaseData&) override {}
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

// Runs the test cases argv selects; exits 1, saying so, when it selects none.
inline int run_tests(int argc, char** argv) {
  doctest::Context context(argc, argv);
  const int status = context.run();
  if (status == 0 && !run_record().query && run_record().selected == 0) {
    std::fprintf(stderr, "error: no test case matches the filters (a mangled test name?)\n");
    return 1;
  }
  return status;
}

}  // namespace ablate_test

DOCTEST_REGISTER_LISTENER("ablate-selection", 0, ablate_test::SelectionListener);
