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
#include <sys/types.h>

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

/*
 * Budgets (SPEC section 1, rate and limits; pool.c, upstream.c).  0 means no
 * limit.  limits.max_messages is not kept here: it caps pool.max_messages.
 */
struct budget_config {
    unsigned messages_per_second;   /* rate.messages_per_second */
    unsigned messages_per_minute;   /* rate.messages_per_minute */
    unsigned max_recipients;        /* rate.max_recipients: RCPTs per upstream transaction */
    unsigned max_logins_per_minute; /* limits.max_logins_per_minute, per account */
};

/* Who may do something: local users and groups, resolved to ids at load (route.c). */
struct access_list {
    int set; /* the list was given; an absent list allows everyone */
    uid_t *uids;
    size_t nuids;
    gid_t *gids;
    size_t ngids;
};

/*
 * daemon.sender_map: the envelope senders one local user may use besides
 * its own name under sender_policy "own".  An address, "@domain" (any
 * local part there) or "<>".
 */
struct sender_map_entry {
    uid_t uid;
    char **addrs;
    size_t naddrs;
};

/* How a relay's From header is fixed (rewrite.c). */
enum from_header_mode { FROM_HEADER_KEEP = 0, FROM_HEADER_REWRITE, FROM_HEADER_ADD_IF_MISSING };

/* One entry of a relay's aliases: local name -> address. */
struct alias {
    char *name;
    char *addr;
};

/* Address fixing for local-only mail (SPEC section 1; rewrite.c). */
struct address_fixing {
    char *qualify_domain; /* NULL: bare local parts stay bare */
    char *sender;         /* forced envelope sender; NULL: keep the client's */
    enum from_header_mode from_header;
    struct alias *aliases;
    size_t naliases;
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

    /* Routing and address fixing (route.c, rewrite.c). */
    struct access_list allow; /* who may use this relay */
    struct address_fixing fix;

    struct budget_config budget; /* rate and limits (pool.c, upstream.c) */
    /* TLS settings applied in pool_new() and the tunnel (upstream.c, proxy.c). */
    char *tls_ciphers;     /* OpenSSL-style suite list; NULL: the built-in choice */
    char *tls_client_cert; /* PEM chain presented to the server; NULL: none */
    char *tls_client_key;  /* its private key (defaults to tls_client_cert) */
    char **tls_pins;       /* base64 SHA-256 SPKI pins (pin_sha256) */
    size_t ntls_pins;
    int proxy_kind;   /* enum proxy_kind: PROXY_NONE unless "proxy" is set */
    char *proxy_host; /* the proxy itself, resolved like a relay host */
    uint16_t proxy_port;
    char *proxy_user;     /* SOCKS5 user (RFC 1929), or NULL */
    char *proxy_password; /* secret: never printed; wiped by config_free() */
    /* Secrets that are not read at load time (secret.c). */
    char *auth_password_command;        /* run through /bin/sh -c at AUTH; NULL: none */
    unsigned auth_password_command_ttl; /* seconds its output is reused; default 300 */
    char *auth_credential; /* systemd credential name (the secret is in auth_password) */
};

enum auth_mech {
    AUTH_MECH_PLAIN = 1u << 0,
    AUTH_MECH_LOGIN = 1u << 1,
    AUTH_MECH_CRAM_MD5 = 1u << 2,
    AUTH_MECH_SCRAM_SHA_256 = 1u << 3,
    AUTH_MECH_XOAUTH2 = 1u << 4,
    AUTH_MECH_OAUTHBEARER = 1u << 5,
    AUTH_MECH_SCRAM_SHA_1 = 1u << 6, /* RFC 5802; below SCRAM-SHA-256 in the default order */
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

/* One entry of the top-level routes list; every condition given must match. */
struct route_rule {
    char *sender_domain;    /* NULL: any */
    char *sender;           /* NULL: any */
    char *recipient_domain; /* NULL: any */
    int has_user;
    uid_t user;
    int has_group;
    gid_t group;
    size_t relay; /* index into relays */
    int line;
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

    /* Routing (route.c): daemon.allow and the ordered top-level routes list. */
    struct access_list allow; /* who may submit at all */
    struct route_rule *routes;
    size_t nroutes;

    /* Envelope sender checks at MAIL FROM (route_sender_allowed()). */
    int sender_policy_own; /* daemon.sender_policy = "own"; 0: "any" */
    struct sender_map_entry *sender_map;
    size_t nsender_map;

    /* The control socket: who besides root and the daemon's user, and how many each. */
    int has_control_group;
    gid_t control_group;          /* daemon.control_group, resolved at load */
    unsigned control_max_per_uid; /* default 8 */
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

/*
 * 1 when two relay profiles would open and run identical sessions (hosts,
 * options, timeouts, AUTH and its secrets, TLS, pool and budgets), else 0.
 * A reload keeps the warm sessions of equal relays and drains the others.
 */
int relay_config_equal(const struct relay_config *a, const struct relay_config *b);

#endif
