#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "kernels/common.h"
#include "tools/commands.h"

namespace mxlm {

std::string human_bytes(uint64_t b) {
  char buf[32];
  if (b >= (uint64_t{1} << 30)) std::snprintf(buf, sizeof(buf), "%.2f GiB", b / double(uint64_t{1} << 30));
  else if (b >= (uint64_t{1} << 20)) std::snprintf(buf, sizeof(buf), "%.2f MiB", b / double(uint64_t{1} << 20));
  else std::snprintf(buf, sizeof(buf), "%llu B", static_cast<unsigned long long>(b));
  return buf;
}

void progress_bar(const char* what, size_t done, size_t total) {
  static const bool tty = ::isatty(::fileno(stderr));
  static std::string current;
  static std::chrono::steady_clock::time_point start;
  const auto now = std::chrono::steady_clock::now();
  if (current != what || done == 0) {
    current = what;
    start = now;
  }
  const double elapsed = std::chrono::duration<double>(now - start).count();
  if (!tty) {
    if (done == total) std::fprintf(stderr, "%s: %zu/%zu done in %.1f s\n", what, done, total, elapsed);
    return;
  }
  const int width = 30;
  const int filled = total ? static_cast<int>(width * done / total) : width;
  char eta[32] = "";
  if (done > 0 && done < total) std::snprintf(eta, sizeof(eta), ", ETA %.0f s", elapsed * double(total - done) / double(done));
  std::fprintf(stderr, "\r%s [%.*s%*s] %zu/%zu %.0f s%s   ", what, filled, "##############################", width - filled, "", done,
               total, elapsed, eta);
  if (done == total) std::fputc('\n', stderr);
  std::fflush(stderr);
}

QType parse_qtype(const std::string& name, const char* option) {
  auto q = qtype_from_name(name);
  if (!q) {
    std::string all;
    for (const auto& info : kQTypes) all += (all.empty() ? "" : ", ") + std::string(info.name);
    throw Error(ErrorCode::kInvalidArgument, std::string(option) + " " + name + " is not a format; known: " + all);
  }
  return *q;
}

}  // namespace mxlm
