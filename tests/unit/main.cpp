#define DOCTEST_CONFIG_IMPLEMENT
#include "../doctest_runner.hpp"

int main(int argc, char** argv) { return ablate_test::run_tests(argc, argv); }
