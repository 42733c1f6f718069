#!/usr/bin/env bash
# The installed package as an app uses it (run by ctest as Install.ExamplesBuildAndRun):
#  1. cmake --install the build into a fresh prefix;
#  2. only mxlm_* symbols are exported: the dynamic symbols of libmxlm.so and the global symbols
#     of libmxlm.a (nm); the public headers include nothing but the C / C++ standard library,
#     and mxlm.h compiles as strict C99;
#  3. examples/ builds against the prefix through find_package(mxlm) (shared and static) and
#     through pkg-config (C with cc, C++ with c++), and every build runs: the C generator's greedy
#     text equals the CLI's reference, the chat loop answers two turns, evaluating only each
#     turn's new tokens; the README's C example compiles as printed and runs.
# Usage: scripts/test_install.sh BUILD_DIR   (MXLM_SHARED: the shared data folder)
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)
build=$(cd "${1:?usage: test_install.sh BUILD_DIR}" && pwd)
shared=${MXLM_SHARED:-$(cd .. && pwd)/shared}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "test_install: FAIL: $*" >&2; exit 1; }

prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null
libdir=$(dirname "$(find "$prefix" -name libmxlm.so -print -quit)")
[ -f "$libdir/libmxlm.a" ] || fail "no libmxlm.a installed"
[ -f "$prefix/include/mxlm.h" ] && [ -f "$prefix/include/mxlm.hpp" ] || fail "headers not installed"
[ -x "$prefix/bin/mxlm" ] || fail "mxlm not installed"
soname=$(objdump -p "$libdir/libmxlm.so" | awk '/SONAME/ {print $2}')
[ "$soname" = libmxlm.so.0.2 ] || fail "SONAME is '$soname', not libmxlm.so.0.2"

# 2. Exported symbols and header hygiene.
bad=$(nm -D --defined-only "$libdir/libmxlm.so" | awk '{print $NF}' | grep -v '^mxlm_' || true)
[ -z "$bad" ] || fail "libmxlm.so exports non-mxlm_ symbols: $(echo "$bad" | head -5)"
n_api=$(nm -D --defined-only "$libdir/libmxlm.so" | grep -c ' T mxlm_')
[ "$n_api" -ge 28 ] || fail "libmxlm.so exports only $n_api mxlm_ functions"
bad=$(nm -g --defined-only "$libdir/libmxlm.a" | awk 'NF == 3 {print $3}' | grep -v '^mxlm_' || true)
[ -z "$bad" ] || fail "libmxlm.a has global non-mxlm_ symbols: $(echo "$bad" | head -5)"
bad=$(grep -h '^#include' "$prefix/include/mxlm.h" "$prefix/include/mxlm.hpp" | grep -v -E '<(stddef|stdint)\.h>|<(exception|functional|stdexcept|string|string_view|utility|vector)>|"mxlm\.h"' || true)
[ -z "$bad" ] || fail "the public headers include $bad"
cc -std=c99 -pedantic -Wall -Wextra -Werror -fsyntax-only -x c "$prefix/include/mxlm.h" || fail "mxlm.h is not strict C99"

model=$shared/models/stories260K/stories260K.gguf
want=$shared/ref/stories260K/stories260K_t0_n64_once.txt
check_generate() {  # binary label
  LD_LIBRARY_PATH=$libdir "$1" "$model" "Once upon a time" 60 0 >"$work/out.txt" 2>"$work/err.txt" || { cat "$work/err.txt" >&2; fail "$2 failed"; }
  cmp -s "$work/out.txt" "$want" || { diff "$work/out.txt" "$want" >&2 || true; fail "$2: greedy text differs from the reference"; }
  # A bad model path is an error with the library's message, not a crash.
  if LD_LIBRARY_PATH=$libdir "$1" "$work/missing.mxlm" "hi" >/dev/null 2>"$work/err.txt"; then fail "$2 accepted a missing model"; fi
  grep -q "missing.mxlm" "$work/err.txt" || fail "$2: the error does not name the file: $(cat "$work/err.txt")"
}
check_chat() {  # binary label
  printf 'Hello there\nTell me a story\n' | LD_LIBRARY_PATH=$libdir "$1" "$model" 24 >"$work/chat.txt" 2>"$work/chat_err.txt" ||
    { cat "$work/chat_err.txt" >&2; fail "$2 failed"; }
  [ "$(grep -c 'turn evaluated' "$work/chat_err.txt")" = 2 ] || fail "$2: not two turns: $(cat "$work/chat_err.txt")"
  # The second turn evaluates its own tokens only: fewer than the whole conversation so far.
  local t2 ctx1
  t2=$(awk '/turn evaluated/ {n++; if (n == 2) print $4}' "$work/chat_err.txt")
  ctx1=$(awk '/turn evaluated/ {n++; if (n == 1) print $8}' "$work/chat_err.txt")
  [ "$t2" -lt "$ctx1" ] || fail "$2: turn 2 evaluated $t2 tokens with $ctx1 in the context already"
  [ -s "$work/chat.txt" ] || fail "$2 printed nothing"
}

# 3a. find_package(mxlm).
cmake -S "$src/examples" -B "$work/ex" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/ex" -j "$(nproc)" >/dev/null || fail "examples do not build with find_package"
check_generate "$work/ex/generate" "generate (find_package, shared)"
check_generate "$work/ex/generate_static" "generate (find_package, static)"
check_chat "$work/ex/chat" "chat (find_package)"
# The static build does not need libmxlm.so at run time.
if ldd "$work/ex/generate_static" | grep -q libmxlm; then fail "generate_static links libmxlm.so"; fi

# The README's C example, as printed there.
awk '/^\/\* gen.c:/ {on = 1} on && /^```/ {exit} on {print}' README.md >"$work/gen.c"
[ -s "$work/gen.c" ] || fail "README.md has no gen.c example"

# 3b. pkg-config.
export PKG_CONFIG_PATH=$libdir/pkgconfig
[ "$(pkg-config --modversion mxlm)" = 0.2.0 ] || fail "pkg-config --modversion: $(pkg-config --modversion mxlm)"
# shellcheck disable=SC2046
cc -std=c99 -Wall -Werror "$src/examples/generate.c" $(pkg-config --cflags --libs mxlm) -o "$work/generate_pc" || fail "cc with pkg-config"
# shellcheck disable=SC2046
cc -std=c99 -Wall -Werror "$work/gen.c" $(pkg-config --cflags --libs mxlm) -o "$work/readme_gen" || fail "the README's C example does not compile"
# shellcheck disable=SC2046
c++ -std=c++17 -Wall -Werror "$src/examples/chat.cpp" $(pkg-config --cflags --libs mxlm) -o "$work/chat_pc" || fail "c++ with pkg-config"
# shellcheck disable=SC2046
cc -std=c99 "$src/examples/generate.c" $(pkg-config --cflags mxlm) "$libdir/libmxlm.a" $(pkg-config --libs-only-other --static mxlm) \
  $(pkg-config --static --libs mxlm | tr ' ' '\n' | grep -v -e '^-lmxlm$' -e '^-L' | tr '\n' ' ') -o "$work/generate_pc_static" ||
  fail "cc with pkg-config --static"
LD_LIBRARY_PATH=$libdir "$work/readme_gen" "$model" >"$work/readme.txt" 2>&1 || { cat "$work/readme.txt" >&2; fail "README example failed"; }
[ "$(wc -c <"$work/readme.txt")" -gt 20 ] || fail "README example printed: $(cat "$work/readme.txt")"
check_generate "$work/generate_pc" "generate (pkg-config)"
check_generate "$work/generate_pc_static" "generate (pkg-config, static)"
check_chat "$work/chat_pc" "chat (pkg-config)"
echo "test_install: the installed package builds and runs its examples (find_package and pkg-config, shared and static)"
