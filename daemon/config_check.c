/*
 * --check-config: load the configuration and print what it means after the
 * option rules (default ports, options implied by 465/587), so an operator
 * sees the effective relay setup before a start or reload.
 */
#include "config_check.h"

#include "config.h"
#include "proxy.h"
#include "proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_relay(FILE *out, const struct config *cfg, size_t idx)
{
    const struct relay_config *r = &cfg->relays[idx];
    fprintf(out, "relay %s%s: hosts", r->name, idx == cfg->default_relay ? " (default)" : "");
    for (size_t i = 0; i < r->nhosts; i++) {
        const struct relay_host *h = &r->hosts[i];
        /* an IPv6 literal needs brackets or its port reads as part of it */
        if (strchr(h->host, ':'))
            fprintf(out, " [%s]:%u", h->host, (unsigned)h->port);
        else
            fprintf(out, " %s:%u", h->host, (unsigned)h->port);
    }
    fputs("; options", out);
    if (!r->options)
        fputs(" none", out);
    for (unsigned bit = 1; bit != 0 && bit <= r->options; bit <<= 1)
        if ((r->options & bit) && relay_option_name(bit))
            fprintf(out, " %s", relay_option_name(bit));
    if (r->has_auth)
        fprintf(out, "; auth user %s", r->auth_user);
    else
        fputs("; no auth", out);
    if (r->proxy_kind != PROXY_NONE) {
        /* built without the password: it never reaches the output */
        struct proxy_url pu = {(enum proxy_kind)r->proxy_kind, r->proxy_host, r->proxy_port,
                               r->proxy_user, NULL};
        char *red = proxy_url_redacted(&pu);
        fprintf(out, "; proxy %s", red ? red : "(out of memory)");
        free(red);
    }
    fprintf(out, "; mode %s\n", r->mode == MODE_RELAY ? MAILPOOL_MODE_RELAY : MAILPOOL_MODE_QUEUE);
}

int config_check_main(const char *path)
{
    /* config_load() marks a message that does not fit with "..." */
    char err[4096];
    if (!path)
        path = MAILPOOL_DEFAULT_CONFIG;
    struct config *cfg = config_load(path, err, sizeof(err));
    if (!cfg) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    printf("%s: ok\n", path);
    for (size_t i = 0; i < cfg->nrelays; i++)
        print_relay(stdout, cfg, i);
    config_free(cfg);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        perror("stdout");
        return 1;
    }
    return 0;
}
