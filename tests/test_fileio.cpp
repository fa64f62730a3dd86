#include <catch2/catch.hpp>

#include <cstdio>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "clip/base/error.h"
#include "clip/base/fileio.h"

using namespace clip;

TEST_CASE("AtomicFile leaves the destination untouched until commit", "[fileio]") {
  char tmpl[] = "/tmp/clipfileioXXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  std::string path = std::string(tmpl) + "/out.txt";
  {
    AtomicFile f(path);
    f.write("first");
    f.commit();
  }
  REQUIRE(read_file(path) == "first");
  {
    AtomicFile f(path);
    f.write("second, never committed");
  }  // destroyed without commit: the old content stays, no temporary file is left
  REQUIRE(read_file(path) == "first");
  MappedFile m(path);
  REQUIRE(m.size() == 5);
  REQUIRE(std::string(reinterpret_cast<const char*>(m.data()), m.size()) == "first");
  REQUIRE_THROWS_AS(read_file(std::string(tmpl) + "/missing"), IoError);
  REQUIRE(path_dirname("a/b/c.pt") == "a/b");
  REQUIRE(path_dirname("c.pt") == ".");
  REQUIRE(path_join("a/", "b") == "a/b");
  std::remove(path.c_str());
  rmdir(tmpl);
}

TEST_CASE("AtomicFile: no symlink followed, permissions kept, no temporary left on failure", "[fileio][hostile]") {
  char tmpl[] = "/tmp/clipfileioXXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const std::string dir = tmpl, path = dir + "/out.txt", victim = dir + "/victim.txt";
  write_file_atomic(victim, "precious");
  // A symbolic link planted at the old predictable name "<path>.tmp.<pid>".
  const std::string planted = path + ".tmp." + std::to_string(::getpid());
  REQUIRE(::symlink(victim.c_str(), planted.c_str()) == 0);
  write_file_atomic(path, "new content");
  CHECK(read_file(victim) == "precious");
  CHECK(read_file(path) == "new content");
  ::unlink(planted.c_str());

  // The rewritten file keeps its permissions.
  REQUIRE(::chmod(path.c_str(), 0640) == 0);
  write_file_atomic(path, "again");
  struct stat st;
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0640);

  // A failed commit (the destination is a non-empty folder) leaves no temporary file.
  const std::string sub = dir + "/sub";
  REQUIRE(::mkdir(sub.c_str(), 0755) == 0);
  write_file_atomic(sub + "/x", "x");
  CHECK_THROWS_AS(write_file_atomic(sub, "cannot replace a folder"), IoError);
  int leftovers = 0;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) leftovers += std::string(e->d_name).find(".tmp.") != std::string::npos;
    ::closedir(d);
  }
  CHECK(leftovers == 0);

  CHECK(same_file(path, dir + "/./out.txt"));
  CHECK_FALSE(same_file(path, victim));
  CHECK(same_file(dir + "/new1", dir + "/../" + path_basename(dir) + "/new1"));
  std::system(("rm -rf '" + dir + "'").c_str());
}

TEST_CASE("AtomicFile removes stale temporary files of its destination, and only those", "[fileio][hostile]") {
  char tmpl[] = "/tmp/clipfileioXXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const std::string dir = tmpl, path = dir + "/store.clipfeat";
  auto age = [](const std::string& p, int age_seconds) {
    struct timespec times[2];
    times[0].tv_sec = times[1].tv_sec = ::time(nullptr) - age_seconds;
    times[0].tv_nsec = times[1].tv_nsec = 0;
    REQUIRE(::utimensat(AT_FDCWD, p.c_str(), times, AT_SYMLINK_NOFOLLOW) == 0);
  };
  auto make = [&](const std::string& p, int age_seconds) {
    write_file_atomic(p, "left over");
    age(p, age_seconds);
  };
  const std::string stale = path + ".tmp.Ab3xYz";        // left by a killed writer: removed
  const std::string fresh = path + ".tmp.Qq1234";        // under 2 s old (a writer about to lock it): kept
  const std::string other = dir + "/other.clipfeat.tmp.Ab3xYz";  // another destination's: kept
  const std::string odd = path + ".tmp.abc";             // not mkstemp's pattern: kept
  const std::string linked = path + ".tmp.Lnk000";       // a symbolic link: never followed, kept
  make(stale, 3600);
  make(fresh, 0);
  make(other, 3600);
  make(odd, 3600);
  REQUIRE(::symlink(stale.c_str(), linked.c_str()) == 0);
  {
    // A writer that is alive (it holds its lock) keeps its temporary file, however old.
    AtomicFile live(path);
    live.write("being written");
    std::string live_tmp;
    if (DIR* d = ::opendir(dir.c_str())) {
      while (const dirent* e = ::readdir(d)) {
        const std::string n = dir + "/" + e->d_name;
        if (n.rfind(path + ".tmp.", 0) == 0 && n != stale && n != fresh && n != odd && n != linked) live_tmp = n;
      }
      ::closedir(d);
    }
    REQUIRE(!live_tmp.empty());
    age(live_tmp, 3600);
    CHECK_FALSE(file_exists(stale));  // the live writer's own constructor already cleaned up
    make(stale, 3600);
    write_file_atomic(path, "second writer");
    CHECK(file_exists(live_tmp));  // locked: kept
    CHECK_FALSE(file_exists(stale));
    CHECK(file_exists(fresh));
    CHECK(file_exists(other));
    CHECK(file_exists(odd));
    struct stat st;
    CHECK(::lstat(linked.c_str(), &st) == 0);
    live.commit();
    CHECK_FALSE(file_exists(live_tmp));
  }
  CHECK(read_file(path) == "being written");
  std::system(("rm -rf '" + dir + "'").c_str());
}
