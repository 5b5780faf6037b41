// Boost.JSON compiled into libpkgctx.so (its header-only build) for pkgctx_checksum's
// canonicaliser; the version script keeps every symbol of it local.
#include <boost/json/src.hpp>
