/* Built against the installed libmailpool only (pkg-config or
 * find_package): proves the header, the link line and the soname work. */
#include <mailpool.h>
#include <stdio.h>

int main(void)
{
    printf("%s\n", mailpool_strerror(MAILPOOL_ERR_TEMPORARY));
    return 0;
}
