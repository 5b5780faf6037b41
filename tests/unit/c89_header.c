/* pkgctx.h in strict C89 (ctest c89_header): plugins built with -std=c89 -pedantic include it
 * too. Uses the inline check so its definition is compiled, not only declared. */
#include "pkgctx.h"

int main(void) {
  pkgctx_check_t check;
  check.word = 0;
  check.snapshot = 0;
  return check.word ? pkgctx_check_cancelled(&check) : pkgctx_token_check(0, &check);
}
