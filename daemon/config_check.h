/*
 * `mailpoold --check-config`: validate a configuration file without starting
 * the daemon, in the spirit of `nginx -t`.
 */
#ifndef MAILPOOL_CONFIG_CHECK_H
#define MAILPOOL_CONFIG_CHECK_H

/*
 * Load `path` (NULL: the default config path).  On success prints
 * "FILE: ok" and one line per relay with its effective hosts, options, auth
 * user and mode to stdout, and returns 0.  On failure prints the error
 * ("FILE:LINE: message") to stderr and returns 1.  Never prints a password.
 */
int config_check_main(const char *path);

#endif
