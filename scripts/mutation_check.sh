#!/usr/bin/env bash
# Mutation check: does the suite catch deliberate bugs? Copies the working tree (tracked and
# untracked, not ignored files) to a scratch folder, builds it once, then for each mutation in
# scripts/mutations.txt applies it, rebuilds, runs the tests named for it and restores the file.
# A mutation is "caught" when a named test fails (or the build breaks, reported apart: a
# mutation should compile). Prints one row per mutation and the failing tests; exits 1 if any
# mutation was not caught, or if the named tests fail before any mutation.
#
#   bash scripts/mutation_check.sh                 # every mutation
#   bash scripts/mutation_check.sh rope outliers   # those whose name contains a word given
#
# MXLM_MUTATION_DIR (default /tmp/mxlm-mutation) keeps the scratch build between runs, so a
# rerun recompiles only what the mutations touch. Data from ${MXLM_SHARED:-../shared}.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=${MXLM_MUTATION_DIR:-/tmp/mxlm-mutation}
export MXLM_SHARED=${MXLM_SHARED:-$(cd .. && pwd)/shared}
mkdir -p "$scratch/src"
exec python3 - "$scratch" "$@" <<'PY'
import filecmp, os, re, shutil, subprocess, sys, time

scratch, words = sys.argv[1], sys.argv[2:]
src, build = os.path.join(scratch, "src"), os.path.join(scratch, "build")

# Copy the files that differ from the scratch copy (a copy gets a new modification time, so
# ninja rebuilds exactly those; files restored after a mutation are newer than their objects).
files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], stdout=subprocess.PIPE,
                       check=True).stdout.decode().split("\0")
for f in filter(None, files):
    if not os.path.isfile(f):
        continue
    dst = os.path.join(src, f)
    if not os.path.exists(dst) or not filecmp.cmp(f, dst, shallow=False):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(f, dst)
if not os.path.exists(os.path.join(build, "CMakeCache.txt")):
    subprocess.run(["cmake", "-S", src, "-B", build, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                    "-DMXLM_BUILD_BENCHMARKS=OFF", "-DMXLM_SHARED_DEFAULT=" + os.environ["MXLM_SHARED"]],
                   stdout=subprocess.DEVNULL, check=True)

def parse(path):
    """scripts/mutations.txt: blocks '=== name', 'file: F', 'tests: gtest filter', then
    'find:' and 'replace:' each followed by verbatim lines (up to the next key line)."""
    muts, cur, key = [], None, None
    for line in open(path, encoding="utf-8").read().split("\n"):
        if line.startswith("=== "):
            cur = {"name": line[4:].strip(), "find": [], "replace": []}
            muts.append(cur)
            key = None
        elif cur is None or (key is None and line.startswith("#")):
            continue
        elif re.match(r"^(file|tests|why): ", line):
            k, v = line.split(": ", 1)
            cur[k] = v.strip()
            key = None
        elif line in ("find:", "replace:"):
            key = line[:-1]
        elif key:
            cur[key].append(line)
    for m in muts:
        for k in ("find", "replace"):
            while m[k] and m[k][-1] == "":
                m[k].pop()
            m[k] = "\n".join(m[k])
    return muts

def build_ok():
    r = subprocess.run(["ninja", "-C", build, "-j", str(os.cpu_count() or 2), "mxlm_tests", "mxlm"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return r.returncode == 0, r.stdout

def run_tests(flt):
    r = subprocess.run([os.path.join(build, "tests", "mxlm_tests"), "--gtest_filter=" + flt, "--gtest_brief=1"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    failed = sorted(set(re.findall(r"^\[  FAILED  \] ([^\s,]+)", r.stdout, re.M)))
    ran = re.search(r"\[==========\] (\d+) tests? from", r.stdout)
    return r.returncode, failed, int(ran.group(1)) if ran else 0, r.stdout

muts = parse(os.path.join(src, "scripts", "mutations.txt"))
if words:
    muts = [m for m in muts if any(w in m["name"] for w in words)]
if not muts:
    sys.exit("mutation_check: no mutation matches " + " ".join(words))

t0 = time.time()
ok, log = build_ok()
if not ok:
    sys.exit("mutation_check: the unmutated tree does not build:\n" + log[-3000:])
for flt in sorted({m["tests"] for m in muts}):
    rc, failed, ran, out = run_tests(flt)
    if rc != 0 or ran == 0:
        sys.exit(f"mutation_check: before any mutation, '{flt}' ran {ran} tests and failed {failed}:\n{out[-3000:]}")
print(f"unmutated tree: builds, named tests pass ({time.time() - t0:.0f} s)\n")

rows, missed = [], 0
for m in muts:
    path = os.path.join(src, m["file"])
    text = open(path, encoding="utf-8").read()
    n = text.count(m["find"])
    if n != 1:
        rows.append((m["name"], "STALE", f"the find text occurs {n} times in {m['file']}"))
        missed += 1
        continue
    t1 = time.time()
    try:
        open(path, "w", encoding="utf-8").write(text.replace(m["find"], m["replace"]))
        ok, log = build_ok()
        if not ok:
            rows.append((m["name"], "BUILD", "the mutation does not compile"))
            missed += 1
            continue
        rc, failed, ran, _ = run_tests(m["tests"])
    finally:
        open(path, "w", encoding="utf-8").write(text)
    if failed or rc != 0:
        shown = ", ".join(failed[:3]) + (f" (+{len(failed) - 3} more)" if len(failed) > 3 else "")
        rows.append((m["name"], "caught", shown or f"exit {rc}"))
    else:
        rows.append((m["name"], "MISSED", f"{ran} tests passed"))
        missed += 1
    print(f"{m['name']}: {rows[-1][1]} ({time.time() - t1:.0f} s)", flush=True)

w = max(len(r[0]) for r in rows)
print(f"\n{'mutation':<{w}}  result  failing tests")
for name, res, detail in rows:
    print(f"{name:<{w}}  {res:<6}  {detail}")
print(f"\n{len(rows) - missed} of {len(rows)} mutations caught in {time.time() - t0:.0f} s")
sys.exit(1 if missed else 0)
PY
