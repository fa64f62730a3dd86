#include <catch2/catch.hpp>

#include <cstdio>
#include <unistd.h>

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
