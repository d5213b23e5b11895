/*
 * The daemon's configuration as plain, immutable data.  config.c is the only
 * file that sees libconfig: it reads and validates the file (unknown keys,
 * wrong types and bad values are errors naming file and line), applies the
 * option rules of the relay profiles (default ports, implied options), and
 * hands back a struct config that the rest of the daemon reads.  A reload
 * builds a new one and swaps it in.
 */
#ifndef MAILPOOL_CONFIG_H
#define MAILPOOL_CONFIG_H

#include <stddef.h>
#include <stdint.h>

/* Relay options: the config words of SPEC section 1. */
enum relay_option {
    RELAY_OPT_EXTENDED = 1u << 0,        /* "extended": ESMTP (EHLO, AUTH, extensions) */
    RELAY_OPT_SECURE = 1u << 1,          /* "secure": STARTTLS required */
    RELAY_OPT_SECURE_IMPLICIT = 1u << 2, /* "secure_implicit": TLS from connect (465) */
    RELAY_OPT_TRUSTED_SITE = 1u << 3,    /* "trusted_site": do not verify the certificate */
    RELAY_OPT_SECURE_FALLBACK = 1u << 4, /* "secure_fallback": allow TLS 1.0/1.1, weak suites */
    RELAY_OPT_PREFER_IPV6 = 1u << 5,     /* "prefer_ipv6" */
    RELAY_OPT_TUNNEL = 1u << 6,          /* "tunnel": ports imply nothing */
};

/* Returns the config word of one option bit, or NULL. */
const char *relay_option_name(unsigned bit);

enum delivery_mode { MODE_QUEUE = 0, MODE_RELAY = 1 };

struct relay_host {
    char *host;    /* name or address literal, without brackets */
    uint16_t port; /* effective port: never 0 after config_load() */
};

/* Per-phase waits, in seconds; 0 means "wait indefinitely". */
struct relay_timeouts {
    unsigned connect;
    unsigned greeting;
    unsigned command;
    unsigned data_block;
    unsigned data_end;
};

struct pool_config {
    unsigned max_connections; /* default 4 */
    unsigned min_idle;        /* default 0 */
    unsigned idle_timeout;    /* seconds, default 300 */
    unsigned keepalive;       /* seconds between NOOPs while idle, 0 = none; default 60 */
    unsigned max_messages;    /* per session, 0 = unlimited; default 1000 */
    unsigned max_age;         /* seconds, 0 = unlimited; default 3600 */
    unsigned max_waiters;     /* messages waiting for a session; default 1000 */
    unsigned wait_timeout;    /* seconds a message may wait for a session; default 60 */
};

struct relay_config {
    char *name;
    struct relay_host *hosts;
    size_t nhosts;
    unsigned options; /* effective enum relay_option bits, after the port rules */
    unsigned timeout; /* seconds; default 60 */
    struct relay_timeouts timeouts;
    enum delivery_mode mode; /* default MODE_QUEUE */
    char *helo_name;         /* NULL: the daemon's hostname */

    int has_auth;
    char *auth_user;
    char *auth_password;      /* the secret itself, read from password or password_file */
    char *auth_password_file; /* where it came from, for messages; NULL if inline */
    unsigned auth_mechanisms; /* enum auth_mech bits allowed; 0 = the default set */
    int allow_plaintext_auth;

    char *tls_ca_file; /* NULL: the system bundle */
    char *tls_ca_path;
    char *tls_server_name; /* NULL: the host name being connected to */
    char *tls_min_version; /* "1.0" .. "1.3"; NULL: 1.2 */

    struct pool_config pool;
    int line; /* line of the profile in the file, for messages */
};

enum auth_mech {
    AUTH_MECH_PLAIN = 1u << 0,
    AUTH_MECH_LOGIN = 1u << 1,
    AUTH_MECH_CRAM_MD5 = 1u << 2,
    AUTH_MECH_SCRAM_SHA_256 = 1u << 3,
    AUTH_MECH_XOAUTH2 = 1u << 4,
    AUTH_MECH_OAUTHBEARER = 1u << 5,
};

/* The spool and queue mode (SPEC section 3). */
struct spool_config {
    uint64_t min_free;           /* bytes that must stay free; default 64 MiB */
    unsigned max_queue_lifetime; /* seconds before a message expires; default 432000 (5 days) */
    unsigned retry_min;          /* first retry delay, seconds; default 60 */
    unsigned retry_max;          /* retry delay cap, seconds; default 3600 */
    char *bounce_to;             /* send every DSN here instead of the sender; NULL: sender */
    unsigned bounce_rate;        /* DSNs per minute at most; default 60 */
    size_t bounce_max_original;  /* original included in a DSN up to this size; default 1 MiB */
};

struct config {
    char *path;
    char *hostname;
    char *submit_socket;
    char *control_socket;
    char *spool_dir;
    size_t max_message_size; /* bytes; default 36700160 */
    unsigned max_clients;    /* default 1024 */
    unsigned client_timeout; /* seconds a local client may stay silent; default 300 */
    int log_level;           /* enum log_level */

    struct spool_config spool;

    struct relay_config *relays;
    size_t nrelays;
    size_t default_relay; /* index into relays */
};

/*
 * Read and validate `path`.  On success returns a new config.  On failure
 * returns NULL and writes "FILE:LINE: message" (or "FILE: message" when no
 * line applies) into err.  Only the first error is reported; control bytes
 * in it are escaped as \xNN, and a message longer than errlen ends in "...".
 * Messages never contain a password.
 */
struct config *config_load(const char *path, char *err, size_t errlen);

/* Free cfg and everything it owns, wiping the passwords first.  NULL is fine. */
void config_free(struct config *cfg);

/* The relay profile called `name`, or NULL. */
const struct relay_config *config_relay(const struct config *cfg, const char *name);

#endif
