// The cuemu drivers' shared check counter: CHECK(cond, fmt, ...) counts, and reports a failure
// with its file:line and a printf message without stopping the run.
#pragma once
#include <cstdio>

inline int gFailures = 0, gChecks = 0;

#define CHECK(cond, ...)                                            \
  do {                                                              \
    ++gChecks;                                                      \
    if (!(cond)) {                                                  \
      ++gFailures;                                                  \
      std::printf("  FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                                     \
      std::printf("\n");                                            \
    }                                                               \
  } while (0)
