// pkgctl: the operator's tool. Everything is in pkgctl_lib (cli.cpp); see pkgctl --help.
#include "pkgctl/cli.hpp"

#include <iostream>

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);
  return pkgctl::run(argc, argv, {std::cout, std::cerr, std::cin});
}
