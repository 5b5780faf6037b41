// pkgctxd: owns a pkgctx segment and serves its control socket. See daemon/README.md.
#include "pkgctx/daemon/run.hpp"

int main(int argc, char** argv) { return pkgctx::daemon::run(argc, argv); }
