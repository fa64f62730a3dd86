#include <catch2/catch.hpp>

#include <cstdio>
#include <dirent.h>
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
